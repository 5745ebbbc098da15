"""TensorRT's calibration files: a ``calibration.cache`` (per-tensor scales) for an implicit-INT8 build.

The scales come from the FP32 ONNX's activation ranges over the set (the same calibrators as the QDQ
path); the cache header names the calibrator that made them, which TensorRT checks before reusing it.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.backends.tensorrt.cache import (
    DEFAULT_ALGO,
    DEFAULT_VERSION,
    calibrator_for,
    method_for,
    scale_from_range,
    write_trt_cache,
)
from edgekit.calib.exporters import ExportContext, activation_ranges
from edgekit.core.errors import ConfigError, ModelError
from edgekit.core.files import atomic_write_json

FORMAT = "tensorrt"
#: What `--method` takes (percentile ranges have no TensorRT calibrator to name).
METHODS = ("minmax", "entropy")
#: ``edgekit calib export`` flags of this format only: (flag, ``write`` parameter, help).
CLI_OPTIONS = (
    ("--trt-version", "version", "TensorRT version for the cache header (default 8502)"),
    (
        "--algo",
        "algo",
        "TensorRT calibrator in the header; follows --method (minmax: MinMaxCalibration, entropy: "
        "EntropyCalibration2; without either: entropy, the calibrator trtexec --calib uses)",
    ),
)


def write(
    ctx: ExportContext,
    onnx: str | Path | None = None,
    method: str = "minmax",
    version: str | int = DEFAULT_VERSION,
    algo: str | None = None,
) -> dict:
    """``calibration.cache`` (TensorRT's text format) and ``ranges.json`` (min, max, scale per tensor)."""
    algo = calibrator_for(method, algo)  # the header names the calibrator that made these scales
    if onnx is None:
        raise ConfigError(
            "the tensorrt export needs the fp32 ONNX model", "pass --onnx MODEL.onnx (onnx=...)"
        )
    if not Path(onnx).is_file():
        raise ModelError(f"ONNX model not found: {onnx}", "pass the fp32 model the engine will be built from")
    ranges = activation_ranges(Path(onnx), list(ctx.tensors()), method)
    scales = {name: scale_from_range(lo, hi) for name, (lo, hi) in ranges.items()}
    write_trt_cache(scales, ctx.tmp / "calibration.cache", version, algo)
    table = {n: {"min": lo, "max": hi, "scale": scales[n]} for n, (lo, hi) in ranges.items()}
    atomic_write_json(ctx.tmp / "ranges.json", table)
    return {
        "files": ["calibration.cache", "ranges.json"],
        "options": {"method": method, "algo": algo, "onnx": str(onnx)},
    }


def cli_kwargs(method: str | None, onnx: Path | None, options: dict) -> dict:
    """``write``'s arguments from the command line: the method and the header calibrator follow each other.

    Neither given: entropy / EntropyCalibration2, the calibrator ``trtexec --calib`` builds with.
    """
    algo = options.get("algo")
    if method is None:
        method = method_for(algo or DEFAULT_ALGO)
    version = options.get("version") or str(DEFAULT_VERSION)
    return {"onnx": onnx, "version": version, "method": method, "algo": calibrator_for(method, algo)}


def cli_notes(kwargs: dict) -> list[str]:
    """What the user should know about what was written."""
    if kwargs.get("algo") in (None, "EntropyCalibration2"):
        return []
    # trtexec's own calibrator is an IInt8EntropyCalibrator2; TensorRT does not reuse a cache made
    # for another calibrator, so this one is for a builder that uses the named calibrator.
    return [
        f"the header names {kwargs['algo']}; trtexec --calib calibrates with EntropyCalibration2 "
        "and will not reuse it (build with a matching IInt8 calibrator, or use --method entropy)"
    ]
