"""``edgekit build`` and ``edgekit bench``: one artifact, one measurement, outside a deploy run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError


def build_artifact(
    backend: str,
    precision: str,
    onnx_path: Path,
    out: Path,
    *,
    calib: str | None = None,
    calib_root: Path = Path("calibration"),
    method: str = "default",
    head: str | None = None,
    threads: int | None = None,
):
    """Build one artifact. INT8 from an FP32 ONNX follows the backend's declared ``int8_source``.

    A QDQ backend (ONNX Runtime) gets a QDQ model quantized here from ``calib`` for this host's CPU;
    a self-quantizing backend (MNN, ncnn) runs its own quantizer on the FP32 model with ``calib``.
    The set's images go through the model's own preprocessing, whatever size they were imported at.

    Example:
        >>> build_artifact("onnxruntime", "fp32", Path("m.onnx"), Path("build/m"))  # doctest: +SKIP
    """
    from edgekit.backends.parity import is_qdq
    from edgekit.calib import CalibrationSet
    from edgekit.models.user import inspect_onnx, static_copy
    from edgekit.registry import BACKENDS

    be = BACKENDS.get(backend)()
    det = inspect_onnx(onnx_path, head=head)
    cs = CalibrationSet.load(calib, root=calib_root).verify() if calib else None
    with tempfile.TemporaryDirectory(prefix="edgekit-build-") as tmp:
        source = Path(onnx_path)
        if not det.static:  # runners feed one fixed shape; fix the file's dynamic dims to it
            source = static_copy(det, Path(tmp) / "model_static.onnx")
        reference: Path | None = source
        quantizer = None
        if precision == "int8":
            from edgekit.backends.onnx_io import load_onnx

            if is_qdq(load_onnx(source)):
                reference = None
                _check_prequantized(be, onnx_path)
            else:
                method = _method(be, method, cs, onnx_path)
                if be.int8_source == "qdq":
                    source, quantizer = _quantize(be, source, Path(tmp) / "model_int8.onnx", cs, method, det)
                else:
                    quantizer = be.quantizer_options(method=method)
        options = det.build_options(precision=precision, threads=threads, quantizer=quantizer)
        return be.build(source, options, out, calib=cs, reference=reference)


def _check_prequantized(be, onnx_path: Path) -> None:
    if be.int8_source != "qdq":
        raise ConfigError(
            f"{onnx_path} is already quantized (QDQ), but backend {be.name} quantizes the FP32 model itself",
            "give the FP32 ONNX and --calib NAME",
        )


def _method(be, method: str, cs, onnx_path: Path) -> str:
    if cs is None:
        raise ConfigError(
            f"{onnx_path} is an FP32 model and int8 was asked without a calibration set",
            "give --calib NAME (see `edgekit calib list`)"
            + (" or a QDQ ONNX" if be.int8_source == "qdq" else ""),
        )
    method = be.methods[0] if method == "default" else method
    if method not in be.methods:
        raise ConfigError(
            f"calibrator '{method}' is not a method of backend {be.name}",
            f"use one of: {', '.join(be.methods)}",
        )
    return method


def _quantize(be, src: Path, dst: Path, cs, method: str, det):
    from edgekit.quantize import quantize_int8
    from edgekit.runners.runcore import cpu_features

    form = be.qdq_form(cpu_features(), "this host (edgekit build)")
    result = quantize_int8(
        src,
        dst,
        lambda: cs.arrays(spec=det.preprocess),
        method=method,
        reduce_range=form.reduce_range,
        keep_float="auto",
    )
    quantizer = be.quantizer_options(
        method=method,
        weight_bits=result.weight_bits,
        weight_range_reason=form.reason,
        keep_float=result.excluded_nodes,
        scales_sha256=result.scales_sha256,
        quantized_nodes=result.quantized_nodes,
    )
    return dst, quantizer


def bench_artifact(
    target_name: str,
    artifact_dir: Path,
    *,
    device: str | None = None,
    iterations: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure an artifact on a target: latency distribution, FPS, power (or why it was not measured)."""
    from edgekit.backends.base import Artifact
    from edgekit.config import load_target
    from edgekit.device.agent import Agent
    from edgekit.device.power import NullSampler
    from edgekit.report.record import latency_stats
    from edgekit.stages.bench import check_target_ready

    target = load_target(target_name)
    artifact = Artifact.load(artifact_dir)
    if artifact.backend != target.backend:
        raise ConfigError(
            f"artifact {artifact_dir} was built for backend {artifact.backend}, target '{target.name}' "
            f"runs {target.backend}",
            f"build it with `edgekit build --backend {target.backend} ...`, or bench it on a target "
            f"that runs {artifact.backend}",
        )
    _, transport_factory = check_target_ready(target, device)
    rt = target.runtime
    shape = artifact.meta["input"]["shape"]
    x = np.random.default_rng(0).random([int(d) for d in shape], dtype=np.float32)
    res = Agent(transport_factory(), sampler=NullSampler()).bench(
        artifact_dir,
        bench_input=x,
        warmup=rt.warmup,
        min_warmup_s=rt.min_warmup_s,
        iterations=iterations or rt.iterations,
        min_seconds=rt.min_seconds if iterations is None else 0.0,
        threads=rt.threads,
        cpus=rt.cpu_affinity,
        progress=progress,
    )
    return {
        "n": len(res.latencies_ms),
        "latency_ms": latency_stats(res.latencies_ms),
        "fps": res.fps,
        "first_ms": res.first_ms,
        "power_w": res.power_w,
        "energy_mj_per_inference": res.energy_mj,
        "power_note": res.power_note,
        "runtime": res.runtime,
        "runtime_version": res.runtime_version,
        "device": res.device,
    }
