"""YOLO-format detection datasets.

Layout: ``root/images/<split>/*``, ``root/labels/<split>/*.txt``, ``root/data.yaml``.

A label line is ``class cx cy w h`` with coordinates normalised to 0..1 (the Ultralytics convention).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edgekit.core.errors import DataError
from edgekit.data.preprocess import IMAGE_SUFFIXES, load_image


@dataclass(frozen=True)
class Sample:
    """One labelled image: boxes are ``xyxy`` in original-image pixels."""

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float32
    classes: np.ndarray  # (K,) int64


def read_label_file(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one YOLO label file into pixel ``xyxy`` boxes and class ids.

    Raises:
        DataError: A line is malformed or names a class outside ``0..num_classes-1``.
    """
    if not path.exists():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{path}:{lineno}: cannot parse label line {line!r}", "expected 'cls cx cy w h'"
            ) from exc
        if len(parts) != 5 or not 0 <= cls < num_classes:
            raise DataError(
                f"{path}:{lineno}: bad label {line!r} (dataset has {num_classes} classes)",
                "each line must be 'cls cx cy w h' with 0 <= cls < nc and coordinates in 0..1",
            )
        rows.append(
            (cls, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        )
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, 1:].astype(np.float32), arr[:, 0].astype(np.int64)


def format_label_lines(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """Format pixel ``xyxy`` boxes as YOLO label text."""
    lines = []
    for (x0, y0, x1, y1), c in zip(boxes, classes, strict=True):
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


class YoloDataset:
    """One split of a YOLO-format dataset.

    Args:
        root: Dataset folder holding ``data.yaml``, ``images/`` and ``labels/``.
        split: Split name (``train``, ``val``, ``calib``, ...).

    Example:
        >>> ds = YoloDataset("data/shapes-hard", "val")  # doctest: +SKIP
        >>> image, sample = ds.load(0)  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        meta_path = self.root / "data.yaml"
        if not meta_path.exists():
            raise DataError(f"{meta_path} not found", "a YOLO dataset needs data.yaml with 'names'")
        meta = yaml.safe_load(meta_path.read_text()) or {}
        names = meta.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not names:
            raise DataError(f"{meta_path} has no 'names'", "list the class names under 'names:'")
        self.names: list[str] = [str(n) for n in names]
        img_dir = self.root / "images" / split
        if not img_dir.is_dir():
            raise DataError(f"split '{split}' not found: {img_dir} is missing", "check the dataset layout")
        self.image_paths = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.image_paths:
            raise DataError(f"no images in {img_dir}", "add images (png/jpg) to this split")
        self._cache: dict[int, Sample] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes named in ``data.yaml``."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.image_paths)

    def label_path(self, image_path: Path) -> Path:
        """The label file that belongs to ``image_path``."""
        return self.root / "labels" / self.split / (image_path.stem + ".txt")

    def sample(self, index: int) -> Sample:
        """Labels of image ``index`` (reads only the image header for its size)."""
        if index not in self._cache:
            from PIL import Image

            path = self.image_paths[index]
            with Image.open(path) as im:
                w, h = im.size
            boxes, classes = read_label_file(self.label_path(path), w, h, self.num_classes)
            self._cache[index] = Sample(path, w, h, boxes, classes)
        return self._cache[index]

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """Image ``index`` as ``HxWx3`` uint8 RGB plus its labels."""
        return load_image(self.image_paths[index]), self.sample(index)

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self)))
