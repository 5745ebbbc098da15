"""``edgekit build`` and ``edgekit bench``: one artifact, one measurement, outside a deploy run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError


def _is_qdq(onnx_path: Path) -> bool:
    import onnx

    return any(
        n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node
    )


def build_artifact(
    backend: str,
    precision: str,
    onnx_path: Path,
    out: Path,
    *,
    calib: str | None = None,
    calib_root: Path = Path("calibration"),
    method: str = "minmax",
    head: str | None = None,
    threads: int | None = None,
):
    """Build one artifact; an FP32 ONNX with ``precision=int8`` is quantized first from ``calib``.

    Example:
        >>> build_artifact("onnxruntime", "fp32", Path("m.onnx"), Path("build/m"))  # doctest: +SKIP
    """
    from edgekit.export.onnx import onnx_info
    from edgekit.models.user import inspect_onnx, static_copy
    from edgekit.registry import BACKENDS

    backend_cls = BACKENDS.get(backend)
    det = inspect_onnx(onnx_path, head=head)
    quantization: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-build-") as tmp:
        source = Path(onnx_path)
        if not det.static:  # runners feed one fixed shape; fix the file's dynamic dims to it
            source = static_copy(det, Path(tmp) / "model_static.onnx")
        if precision == "int8" and not _is_qdq(source):
            if not calib:
                raise ConfigError(
                    f"{onnx_path} is an FP32 model and int8 was asked without a calibration set",
                    "give --calib NAME (see `edgekit calib list`) or a QDQ ONNX",
                )
            from edgekit.runners.runcore import cpu_features

            form = backend_cls().qdq_form(cpu_features(), "this host (edgekit build)")
            source, quantization = _quantize(
                source, Path(tmp) / "model_int8.onnx", calib, calib_root, method, onnx_info(source), form
            )
        options = det.build_options(precision=precision, threads=threads, quantization=quantization)
        return backend_cls().build(source, options, out)


def _quantize(src: Path, dst: Path, calib: str, calib_root: Path, method: str, info: dict, form):
    from edgekit.calib import CalibrationSet
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.quantize import quantize_int8

    cs = CalibrationSet.load(calib, root=calib_root).verify()
    shape = info["input_shape"]
    cs.check_spec(PreprocessSpec(**{**cs.spec.model_dump(), "input_size": int(shape[-1])}))
    result = quantize_int8(
        src, dst, lambda: cs.arrays(), method=method, reduce_range=form.reduce_range, keep_float="auto"
    )
    return dst, {
        "calibrator": method,
        "weight_bits": result.weight_bits,
        "weight_range_reason": form.reason,
        "calibration": cs.ref(),
        "keep_float": result.excluded_nodes,
        "scales_sha256": result.scales_sha256,
    }


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
    from edgekit.stages import check_target_ready

    target = load_target(target_name)
    artifact = Artifact.load(artifact_dir)
    _, transport_factory = check_target_ready(target.model_copy(update={"backend": artifact.backend}), device)
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
