"""``edgekit build`` and ``edgekit bench``: one artifact, one measurement, outside a deploy run."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
    from edgekit.runners.runcore import cpu_features

    form = be.qdq_form(cpu_features(), "this host (edgekit build)")
    result = form.quantizer(
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
