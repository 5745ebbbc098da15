"""What a calibration set holds: sizes, channel statistics, classes and box sizes, a contact sheet, diffs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.calib.manifest import list_versions
from edgekit.calib.sampling import SIZE_BUCKETS, input_areas, size_bucket
from edgekit.core.files import atomic_write_bytes
from edgekit.data.dataset import read_label_file
from edgekit.data.preprocess import letterbox, load_image

if TYPE_CHECKING:
    from edgekit.calib.calibration_set import CalibrationSet


def show(cs: CalibrationSet, channel_stats: bool = True) -> dict:
    """Summarise a set (verifies it first when ``channel_stats`` reads the images).

    Returns:
        ``name, version, sha256, created, source, count, versions, bytes, width/height {min, median, max},
        channel_mean/channel_std`` (per channel of the preprocessed tensors, in the network's channel
        order), ``labels`` (per-class box and image counts, box sizes small/medium/large in input pixels)
        when the set has labels, and the import ``warnings``.

    Example:
        >>> show(CalibrationSet.load("shapes"))["channel_mean"]  # doctest: +SKIP
    """
    m = cs.manifest
    widths = np.array([e.width for e in m.images])
    heights = np.array([e.height for e in m.images])
    out: dict = {
        **cs.ref(),
        "created": m.created,
        "source": m.source.model_dump(),
        "count": m.count,
        "versions": list_versions(cs.dir),
        "bytes": int(sum(e.bytes for e in m.images)),
        "width": _min_med_max(widths),
        "height": _min_med_max(heights),
        "spec": cs.spec.model_dump(),
    }
    if channel_stats:
        out["channel_mean"], out["channel_std"] = channel_moments(cs)
    if m.has_labels:
        out["labels"] = label_stats(cs)
    out["warnings"] = list(m.warnings)
    return out


def _min_med_max(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def channel_moments(cs: CalibrationSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the preprocessed tensors (float64 accumulation)."""
    axis = 1 if cs.spec.layout == "NCHW" else 3
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for arr in cs.arrays():
        per_channel = np.moveaxis(arr, axis, 0).reshape(3, -1).astype(np.float64)
        total += per_channel.sum(axis=1)
        total_sq += (per_channel**2).sum(axis=1)
        n += per_channel.shape[1]
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(total_sq / max(n, 1) - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def label_stats(cs: CalibrationSet) -> dict:
    """Box count and image count per class, and box sizes (COCO buckets in network-input pixels)."""
    names = cs.manifest.class_names or []
    boxes_per_class: dict[str, int] = {n: 0 for n in names}
    images_per_class: dict[str, int] = {n: 0 for n in names}
    sizes = dict.fromkeys(SIZE_BUCKETS, 0)
    background = 0
    for e in cs.manifest.images:
        boxes, classes = read_label_file(cs.dir / e.label_file, e.width, e.height, max(len(names), 1))
        background += int(len(classes) == 0)
        for cls in classes:
            boxes_per_class[_name(names, cls)] = boxes_per_class.get(_name(names, cls), 0) + 1
        for cls in set(classes.tolist()):
            images_per_class[_name(names, cls)] = images_per_class.get(_name(names, cls), 0) + 1
        for area in input_areas(boxes, e.width, e.height, cs.spec):
            sizes[size_bucket(float(area))] += 1
    return {
        "boxes_per_class": boxes_per_class,
        "images_per_class": images_per_class,
        "box_sizes": sizes,
        "background_images": background,
    }


def _name(names: list[str], cls: int) -> str:
    return names[cls] if 0 <= cls < len(names) else str(cls)


def contact_sheet(cs: CalibrationSet, out_png: str | Path, cols: int = 8, thumb: int = 128) -> Path:
    """Write a grid of the letterboxed network inputs (label boxes drawn in green) as one PNG.

    Returns:
        The PNG path.
    """
    import io

    from PIL import Image, ImageDraw

    cs.verify()
    n = cs.count
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb, rows * thumb), (32, 32, 32))
    for i, e in enumerate(cs.manifest.images):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*image converted to RGB")
            canvas, lb = letterbox(load_image(cs.dir / e.file), cs.spec)
        tile = Image.fromarray(canvas)
        if e.label_file:
            boxes, _ = read_label_file(cs.dir / e.label_file, e.width, e.height, 1 << 30)
            draw = ImageDraw.Draw(tile)
            for x0, y0, x1, y1 in boxes:
                xy = (
                    x0 * lb.scale + lb.pad_x,
                    y0 * lb.scale + lb.pad_y,
                    x1 * lb.scale + lb.pad_x,
                    y1 * lb.scale + lb.pad_y,
                )
                draw.rectangle(xy, outline=(0, 255, 0), width=max(1, cs.spec.input_size // 160))
        tile = tile.resize((thumb, thumb), Image.BILINEAR)
        sheet.paste(tile, ((i % cols) * thumb, (i // cols) * thumb))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write_bytes(out_png, buf.getvalue())


def diff(a: CalibrationSet, b: CalibrationSet) -> dict:
    """What changed from ``a`` to ``b``: images added/removed (by sha256) and preprocessing fields.

    Returns:
        ``{"a", "b" (refs), "added", "removed" ([{sha256, source_name}]), "kept" (int), "spec_changes"
        (["field: a != b"]), "same" (bool: identical content hash)}``.
    """
    ha = {e.sha256: e.source_name for e in a.manifest.images}
    hb = {e.sha256: e.source_name for e in b.manifest.images}
    return {
        "a": a.ref(),
        "b": b.ref(),
        "added": [{"sha256": h, "source_name": hb[h]} for h in hb if h not in ha],
        "removed": [{"sha256": h, "source_name": ha[h]} for h in ha if h not in hb],
        "kept": len(ha.keys() & hb.keys()),
        "spec_changes": a.spec.differences(b.spec),
        "same": a.sha256 == b.sha256,
    }
