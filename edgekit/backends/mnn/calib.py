"""Calibration images for MNN's quantizer: check the folder, write exact-size canvases, read the side-car.

MNN's quantizer (``tools/quantization/Helper.cpp``) reads each file with stb_image as RGBA, optionally
centre-crops it (``center_crop_h/w``, default the whole image) and maps its corners onto the
``width`` x ``height`` input with a bilinear affine transform: a **stretch**, never a letterbox. A PNG of
exactly the input size therefore reaches the model pixel for pixel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import CalibrationError
from edgekit.core.files import atomic_dir

#: stb_image decodes these (no WebP/TIFF); PIL checks them first so the tool never sees a bad file.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class ScaleSummary:
    """What the quantizer's ``<dst>.json`` side-car says about per-tensor activation scales.

    KL writes real scales; EMA (3.6.1) writes every scale as 0 because its scales live in the graph.
    """

    tensors: int
    nonzero: int
    min_scale: float
    max_scale: float


def scale_summary(sidecar: Path) -> ScaleSummary | None:
    """Unique tensor scales in the side-car: ``[{name, inputs|outputs: [{tensorIndex, scales}]}]``."""
    try:
        ops = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    scales: dict[int, float] = {}
    for op in ops if isinstance(ops, list) else []:
        for entry in [*op.get("inputs", []), *op.get("outputs", [])]:
            scales[entry.get("tensorIndex", -1)] = float(max(entry.get("scales") or [0.0]))
    nonzero = [s for s in scales.values() if s > 0]
    return ScaleSummary(len(scales), len(nonzero), min(nonzero, default=0.0), max(nonzero, default=0.0))


def calibration_images(
    images_dir: str | Path, count: int, size: tuple[int, int], allow_resize: bool = False
) -> tuple[Path, ...]:
    """Check a calibration folder the way MNN should have, and return its first ``count`` images by name.

    Raises:
        CalibrationError: Missing or empty folder, a sub-folder, a non-image or undecodable file, fewer
            than ``count`` images, or (unless ``allow_resize``) an image that is not ``size`` (w, h).
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist", "export the calibration set")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not files:
        raise CalibrationError(f"calibration folder {folder} is empty", "export the calibration set there")
    bad = [p.name for p in files if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        raise CalibrationError(
            f"calibration folder {folder} holds non-image entries: {', '.join(bad[:5])}",
            f"keep only {'/'.join(IMAGE_SUFFIXES)} files there (MNN would feed the others as images)",
        )
    if len(files) < count:
        raise CalibrationError(
            f"calibration folder {folder} has {len(files)} images, {count} requested",
            "add images or lower used_image_num",
        )
    for path in files[:count]:
        _check_image(path, size, allow_resize)
    return tuple(files[:count])


def _check_image(path: Path, size: tuple[int, int], allow_resize: bool) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode, actual = im.mode, im.size
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise CalibrationError(f"cannot decode calibration image {path}: {exc}", "remove the file") from exc
    if mode == "CMYK":
        raise CalibrationError(f"{path} is a CMYK image (stb_image cannot read it)", "save it as RGB")
    if actual != size and not allow_resize:
        raise CalibrationError(
            f"{path.name} is {actual[0]}x{actual[1]}, the model input is {size[0]}x{size[1]}: MNN's "
            "quantizer would stretch it (no letterbox), so calibration would not match the model",
            "write letterboxed canvases with write_letterboxed_images(), or pass allow_resize=True",
        )


def write_letterboxed_images(
    arrays: Iterable[np.ndarray], out_dir: str | Path, overwrite: bool = False
) -> list[Path]:
    """Write preprocessed float CHW RGB arrays in [0, 1] as 8-bit PNGs of exactly their size.

    With the PNGs at the model's input size, MNN's stretch is the identity, so ``mean=0`` and
    ``normal=1/255`` give back each array up to 8-bit rounding: at most 0.5/255 = 0.00196 (0 for arrays
    that came from 8-bit canvases, as edgekit's letterbox makes).

    Args:
        arrays: ``(3, H, W)`` or ``(1, 3, H, W)`` arrays, all the same size, values in [0, 1].
        out_dir: Folder to create (atomically).
        overwrite: Replace an existing folder.

    Returns:
        The written files, ``00000.png``, ``00001.png``, ... in input order.

    Raises:
        CalibrationError: No arrays, a bad shape or size mismatch, or values outside [0, 1].

    Example:
        >>> write_letterboxed_images([np.zeros((3, 64, 64), np.float32)], "calib")  # doctest: +SKIP
        [PosixPath('calib/00000.png')]
    """
    from PIL import Image

    out, names, shape = Path(out_dir), [], None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, arr in enumerate(arrays):
            chw = np.asarray(arr, dtype=np.float64)
            chw = chw[0] if chw.ndim == 4 and chw.shape[0] == 1 else chw
            shape = shape or chw.shape
            _check_canvas(i, chw, shape)
            pixels = np.clip(np.rint(chw * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp / f"{i:05d}.png")
            names.append(f"{i:05d}.png")
        if not names:
            raise CalibrationError("no arrays to write", "pass at least one preprocessed image")
    return [out / n for n in names]


def _check_canvas(i: int, chw: np.ndarray, shape: tuple[int, ...]) -> None:
    if chw.ndim != 3 or chw.shape[0] != 3 or chw.shape != shape:
        raise CalibrationError(
            f"array {i} has shape {chw.shape}; expected (3, H, W) like the first, {tuple(shape)}",
            "pass preprocessed CHW RGB arrays of the model input size",
        )
    if not np.isfinite(chw).all() or chw.min() < -1e-6 or chw.max() > 1 + 1e-6:
        raise CalibrationError(
            f"array {i} has values outside [0, 1] ({chw.min():.3g}..{chw.max():.3g})",
            "pass arrays before mean/std normalisation; give MNN mean and normal instead",
        )
