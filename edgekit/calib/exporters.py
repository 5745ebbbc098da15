"""Write one calibration set in the form each quantizer wants.

Every export holds ``images/`` (the letterboxed canvases at the input size, so a tool that resizes does
nothing), the tool-specific description, and ``calibration.json`` (set ref, spec, format, options). The
folder is built in a temp sibling and renamed into place only when complete.

Channel order: ``spec.mean``/``spec.std`` are indexed in the network's channel order (edgekit swaps to BGR
before normalising), which is also the order MNN (``format``) and ncnn (``pixel``) apply them in, so the
values are passed through without reordering.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.backends.tensorrt.cache import DEFAULT_VERSION, calibrator_for, scale_from_range, write_trt_cache
from edgekit.data.preprocess import letterbox, load_image, to_tensor
from edgekit.errors import CalibrationError, ConfigError, ModelError
from edgekit.fsutil import atomic_dir, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from edgekit.calib.calibration_set import CalibrationSet


@dataclass
class _Ctx:
    """What every format writer gets: the set, the temp folder, the final folder and the canvases."""

    cs: CalibrationSet
    tmp: Path
    final: Path
    image_files: list[str]
    limit: int | None

    def tensors(self) -> Iterator[np.ndarray]:
        """Batch-1 tensors of the exported images, through the one preprocessing."""
        for canvas in _canvases(self.cs, self.limit):
            yield to_tensor(canvas, self.cs.spec)

    def stacked(self) -> np.ndarray:
        """All tensors stacked along the batch axis, in the spec's layout."""
        return np.concatenate(list(self.tensors()))


def export(cs: CalibrationSet, fmt: str, out_dir: str | Path, **kw: Any) -> list[Path]:
    """Export ``cs`` for one quantizer into ``out_dir`` (created; must not exist unless ``overwrite=True``).

    Args:
        cs: A loaded calibration set (verified here first).
        fmt: One of :data:`FORMATS`: onnxruntime, mnn, ncnn, tensorrt, tflite.
        out_dir: Folder to create.
        **kw: ``limit`` (first N images), ``overwrite``, and the format's options: mnn ``feature_method``
            (EMA|KL), ``weight_method``, ``batch_size``; ncnn ``method`` (kl|aciq), ``thread``; tensorrt
            ``onnx`` (required fp32 model), ``method`` (minmax|entropy|percentile), ``version``, ``algo``;
            onnxruntime ``input_name``.

    Returns:
        Every file written, under the final ``out_dir``.

    Raises:
        ConfigError: Unknown format or option.
        CalibrationError: The set fails verification.

    Example:
        >>> export(CalibrationSet.load("shapes"), "mnn", "out/mnn-calib")  # doctest: +SKIP
    """
    writer = FORMATS.get(fmt)
    if writer is None:
        raise ConfigError(f"unknown calibration export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    limit, overwrite = kw.pop("limit", None), kw.pop("overwrite", False)
    _check_options(fmt, writer, kw)
    cs.verify()
    out_dir = Path(out_dir)
    final = out_dir.resolve()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        ctx = _Ctx(cs, tmp, final, _write_canvases(cs, tmp, limit), limit)
        details = writer(ctx, **kw)
        info = {"set": cs.ref(), "format": fmt, "count": len(ctx.image_files), "spec": cs.spec.model_dump()}
        atomic_write_json(tmp / "calibration.json", {**info, **details})
    return sorted(final / p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


def _check_options(fmt: str, writer: Callable, kw: dict) -> None:
    allowed = [n for n in inspect.signature(writer).parameters if n != "ctx"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the {fmt} export: {', '.join(unknown)}",
            f"{fmt} takes: {', '.join(allowed) or 'no options'} (plus limit, overwrite)",
        )


def _canvases(cs: CalibrationSet, limit: int | None) -> Iterator[np.ndarray]:
    for path in cs.image_paths(limit):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*image converted to RGB")
            yield letterbox(load_image(path), cs.spec)[0]


def _write_canvases(cs: CalibrationSet, tmp: Path, limit: int | None) -> list[str]:
    from PIL import Image

    (tmp / "images").mkdir()
    names = []
    entries = cs.manifest.images if limit is None else cs.manifest.images[:limit]
    for i, (entry, canvas) in enumerate(zip(entries, _canvases(cs, limit), strict=True)):
        name = f"images/{i:05d}_{entry.sha256[:12]}.png"
        Image.fromarray(canvas).save(tmp / name)
        names.append(name)
    return names


def _tool_mean_norm(cs: CalibrationSet) -> tuple[list[float], list[float]]:
    """MNN/ncnn compute ``(src - mean) * norm`` on 0..255 pixels; edgekit ``(src/255 - mean) / std``."""
    mean = [255.0 * m for m in cs.spec.mean]
    norm = [1.0 / (255.0 * s) for s in cs.spec.std]
    return mean, norm


# --- formats --------------------------------------------------------------------------------------------


def _onnxruntime(ctx: _Ctx, input_name: str = "images") -> dict:
    arr = ctx.stacked()
    np.save(ctx.tmp / "inputs.npy", arr)
    reader = {
        "input_name": input_name,
        "count": int(arr.shape[0]),
        "shape": list(arr.shape),
        "layout": ctx.cs.spec.layout,
        "spec": ctx.cs.spec.model_dump(),
        "set": ctx.cs.ref(),
        "file": "inputs.npy",
    }
    atomic_write_json(ctx.tmp / "reader.json", reader)
    return {"files": ["inputs.npy", "reader.json"]}


def _mnn(
    ctx: _Ctx, feature_method: str = "EMA", weight_method: str = "MAX_ABS", batch_size: int | None = None
) -> dict:
    feature, weight = feature_method.upper(), weight_method.upper()
    if feature == "ADMM":
        raise ConfigError(
            "MNN's ADMM feature quantizer is refused: in MNN 3.6.1 it segfaults after 'Quantize model done!' "
            "and the model outputs all zeros",
            "use feature_method EMA (default, most accurate here) or KL",
        )
    if feature not in ("EMA", "KL") or weight not in ("MAX_ABS", "ADMM"):
        raise ConfigError(
            f"bad MNN quantizer methods feature={feature_method!r} weight={weight_method!r}",
            "feature_method: EMA or KL; weight_method: MAX_ABS or ADMM",
        )
    mean, norm = _tool_mean_norm(ctx.cs)
    size = ctx.cs.spec.input_size
    cfg = {
        "format": ctx.cs.spec.channel_order,
        "mean": mean,
        "normal": norm,
        "width": size,
        "height": size,
        "path": str(ctx.final / "images") + "/",
        "used_image_num": len(ctx.image_files),
        "feature_quantize_method": feature,
        "weight_quantize_method": weight,
    }
    if batch_size is not None and feature == "EMA":
        cfg["batch_size"] = int(batch_size)
    atomic_write_json(ctx.tmp / "mnn_quant.json", cfg)
    return {"files": ["mnn_quant.json"], "options": {"feature_method": feature, "weight_method": weight}}


def _ncnn(ctx: _Ctx, method: str = "kl", thread: int = 2) -> dict:
    if method not in ("kl", "aciq"):
        raise ConfigError(
            f"bad ncnn2table method {method!r}", "use kl or aciq (method=eq segfaults in ncnn2table)"
        )
    mean, norm = _tool_mean_norm(ctx.cs)
    size = ctx.cs.spec.input_size
    listing = "".join(f"{ctx.final / f}\n" for f in ctx.image_files)
    atomic_write_text(ctx.tmp / "imagelist.txt", listing)
    args = (
        f"mean=[{_floats(mean)}] norm=[{_floats(norm)}] shape=[{size},{size},3] "
        f"pixel={ctx.cs.spec.channel_order} thread={int(thread)} method={method}"
    )
    atomic_write_text(ctx.tmp / "ncnn2table.args", args + "\n")
    usage = f"ncnn2table MODEL.param MODEL.bin {ctx.final / 'imagelist.txt'} MODEL.table {args}"
    return {"files": ["imagelist.txt", "ncnn2table.args"], "usage": usage}


def _floats(values: list[float]) -> str:
    return ",".join(f"{v:.9g}" for v in values)


def _tensorrt(
    ctx: _Ctx,
    onnx: str | Path | None = None,
    method: str = "minmax",
    version: str | int = DEFAULT_VERSION,
    algo: str | None = None,
) -> dict:
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


def _tflite(ctx: _Ctx) -> dict:
    arr = ctx.stacked()
    nhwc = arr.transpose(0, 2, 3, 1) if ctx.cs.spec.layout == "NCHW" else arr
    np.savez(ctx.tmp / "representative.npz", inputs=np.ascontiguousarray(nhwc, dtype=np.float32))
    ref = ctx.cs.ref()
    atomic_write_text(ctx.tmp / "representative.py", _REPRESENTATIVE_PY.format(**ref))
    # onnx2tf -cind wants raw 0..1 NHWC pixels plus mean/std of shape [1,1,1,3] and normalises itself.
    raw = np.stack([c.astype(np.float32) / 255.0 for c in _canvases(ctx.cs, ctx.limit)])
    if ctx.cs.spec.channel_order == "BGR":
        raw = raw[..., ::-1]
    np.save(ctx.tmp / "cind_nhwc.npy", np.ascontiguousarray(raw, dtype=np.float32))
    cind = {"file": "cind_nhwc.npy", "mean": [[[list(ctx.cs.spec.mean)]]], "std": [[[list(ctx.cs.spec.std)]]]}
    return {"files": ["representative.npz", "representative.py", "cind_nhwc.npy"], "onnx2tf_cind": cind}


_REPRESENTATIVE_PY = '''"""Representative dataset for the TFLite converter.

Calibration set {name} v{version}, sha256 {sha256}.
Written by edgekit; needs only numpy. Samples are preprocessed float32 NHWC tensors.

    converter.representative_dataset = representative_dataset
"""

from pathlib import Path

import numpy as np

_NPZ = Path(__file__).with_name("representative.npz")


def representative_dataset():
    """Yield ``[array]`` with one (1, H, W, C) float32 sample per calibration image."""
    with np.load(_NPZ) as data:
        inputs = data["inputs"]
    for i in range(inputs.shape[0]):
        yield [inputs[i : i + 1]]
'''


# --- activation ranges ----------------------------------------------------------------------------------


def activation_ranges(onnx_path: Path, arrays: list[np.ndarray], method: str = "minmax") -> dict:
    """Per-tensor ``(min, max)`` of every activation of an fp32 ONNX model over ``arrays``.

    Delegates to ``edgekit.quantize.ptq.tensor_ranges`` so that the TensorRT cache and the ONNX Runtime
    QDQ model come from one calibration code path (tensor names are kept: no graph optimisation).
    """
    from edgekit.quantize.ptq import tensor_ranges

    if not arrays:
        raise CalibrationError("no calibration tensors to compute ranges from", "the set or --limit is empty")
    if method not in RANGE_METHODS:
        raise ConfigError(f"unknown range method {method!r}", f"use one of: {', '.join(RANGE_METHODS)}")
    raw = tensor_ranges(onnx_path, arrays, method)
    return {name: (float(lo), float(hi)) for name, (lo, hi) in raw.items()}


RANGE_METHODS = ("minmax", "entropy", "percentile")


FORMATS: dict[str, Callable[..., dict]] = {
    "onnxruntime": _onnxruntime,
    "mnn": _mnn,
    "ncnn": _ncnn,
    "tensorrt": _tensorrt,
    "tflite": _tflite,
}


def dump_info(out_dir: str | Path) -> dict:
    """Read back an export's ``calibration.json``."""
    return json.loads((Path(out_dir) / "calibration.json").read_text())
