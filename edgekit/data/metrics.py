"""mAP@0.5 and mAP@0.5:0.95 with pycocotools, from ground truth and detections in original-image pixels."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from edgekit.data.dataset import Sample


def _coco_gt(samples: Sequence[Sample], num_classes: int) -> dict:
    images, annotations = [], []
    for i, s in enumerate(samples):
        images.append({"id": i, "width": s.width, "height": s.height})
        for box, cls in zip(s.boxes, s.classes, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(cls),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_map(
    samples: Sequence[Sample], detections: Sequence[np.ndarray], num_classes: int
) -> dict[str, float]:
    """Return ``{"map50", "map50_95"}`` (0..1) over ``samples``.

    Args:
        samples: Ground truth per image.
        detections: Per image, ``(K, 6)`` rows ``x0, y0, x1, y1, score, class`` in original-image pixels.
        num_classes: Number of classes of the dataset.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(samples) != len(detections):
        raise ValueError(f"{len(samples)} images but {len(detections)} detection lists")
    results = []
    for i, dets in enumerate(detections):
        for x0, y0, x1, y1, score, cls in np.asarray(dets, dtype=np.float64).reshape(-1, 6):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(cls),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    if not results or not any(len(s.boxes) for s in samples):
        return {"map50": 0.0, "map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = _coco_gt(samples, num_classes)
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": round(float(ev.stats[1]), 5), "map50_95": round(float(ev.stats[0]), 5)}
