"""Images without labels: a folder split in two, and the teacher's detections standing in for ground truth.

Compressing a user's detector needs no labels: the pruned model is distilled from the unpruned one (the
teacher) on any images, and judged by **teacher agreement**: the mAP of the student's detections measured
against the teacher's own detections (score >= :data:`AGREEMENT_CONF`) on images the distillation did not
see. It says how much of what the model did survives; it is not the model's mAP, and the record, report
and summary name it ``teacher_agreement``.

Example:
    >>> train, held = folder_splits("photos/")  # doctest: +SKIP
    >>> len(held) * 5 >= len(train)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import DataError
from edgekit.data.dataset import Sample
from edgekit.data.preprocess import IMAGE_SUFFIXES, load_image

#: Teacher detections at or above this score are the reference (Ultralytics' default predict threshold).
AGREEMENT_CONF = 0.25
#: Fewest images a folder must hold: distillation needs a few batches, agreement needs held-back images.
MIN_IMAGES = 40
#: Every HELD_EVERY-th image (sorted by name) is held back for the agreement measure.
HELD_EVERY = 5


class ImageFolder:
    """A folder of images (searched recursively) seen through the interface of a dataset split."""

    def __init__(self, paths: list[Path], num_classes: int = 1) -> None:
        self.image_paths, self.num_classes = paths, num_classes
        self.names = [f"class{i}" for i in range(num_classes)]
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.image_paths)

    def sample(self, index: int) -> Sample:
        """An unlabelled sample (the image size only)."""
        if index not in self._cache:
            from PIL import Image

            with Image.open(self.image_paths[index]) as im:
                w, h = im.size
            self._cache[index] = Sample(
                self.image_paths[index], w, h, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            )
        return self._cache[index]

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """Image ``index`` as ``HxWx3`` uint8 RGB and its (empty) sample."""
        return load_image(self.image_paths[index]), self.sample(index)


def folder_splits(folder: str | Path, num_classes: int = 1) -> tuple[ImageFolder, ImageFolder]:
    """The folder's images as (distillation images, held-back images): every 5th, sorted by path, is held.

    Raises:
        DataError: Not a folder, or fewer than :data:`MIN_IMAGES` images in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"image folder not found: {folder}", "give a folder of .jpg/.png images with --images"
        )
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < MIN_IMAGES:
        raise DataError(
            f"{folder} holds {len(paths)} images; distillation needs at least {MIN_IMAGES} (1 in "
            f"{HELD_EVERY} is held back to measure teacher agreement)",
            f"add images to {folder} (any photos of the model's domain; labels are not needed)",
        )
    held = [p for i, p in enumerate(paths) if i % HELD_EVERY == HELD_EVERY - 1]
    rest = [p for i, p in enumerate(paths) if i % HELD_EVERY != HELD_EVERY - 1]
    return ImageFolder(rest, num_classes), ImageFolder(held, num_classes)


def teacher_labelled(
    split: Any, candidates: list[np.ndarray], num_classes: int, conf: float = AGREEMENT_CONF
):
    """A copy of an in-memory split whose ground truth is the teacher's detections (score >= ``conf``).

    Args:
        split: An :class:`~edgekit.models.train.InMemorySplit` (its labels, if any, are replaced).
        candidates: Per image, the teacher's candidate rows in network-input pixels.
        num_classes: The model's class count.
        conf: Teacher detections at or above this score are the reference.
    """
    from edgekit.runners.detcore import nms

    out = copy.copy(split)
    out.samples, out.boxes, out.num_classes = [], [], num_classes
    for sample, lb, cand in zip(split.samples, split.letterboxes, candidates, strict=True):
        dets = nms(np.asarray(cand, np.float32).reshape(-1, 6), 0.5, 100)
        dets = dets[dets[:, 4] >= conf] if len(dets) else dets.reshape(0, 6)
        boxes = dets[:, :4].astype(np.float32)
        out.boxes.append(boxes)
        original = lb.to_original(boxes) if len(boxes) else boxes
        out.samples.append(
            Sample(sample.image_path, sample.width, sample.height, original, dets[:, 5].astype(np.int64))
        )
    return out


def detections_found(split: Any) -> int:
    """How many reference boxes a teacher-labelled split holds (0: agreement cannot be measured)."""
    return int(sum(len(s.boxes) for s in split.samples))
