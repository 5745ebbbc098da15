"""A detection loss on a detector's decoded output, for a user's model with labels (``--data``).

A user's detector brings no loss of its own, but every head edgekit reads (``yolov5``, ``yolov8``,
``yolox``) decodes to rows of (box in pixels, objectness or none, class probabilities), and the rows are
laid out the same way by every YOLO exporter: scale after scale (strides 8, 16, 32 and sometimes 64), one
row per grid cell, or per anchor and cell (anchor-major) for anchor heads. :func:`row_points` recovers
each row's cell centre and stride from the row count alone, and the loss assigns labels to rows as
task-aligned assignment does:

- a row is a candidate for a box when its cell centre lies inside the box, or within 2.5 strides of the
  box's centre;
- among those, the ``TOP_K`` rows with the highest alignment (class score x IoU^6) are positives, and a
  row claimed by two boxes keeps the one it overlaps more;
- class (and objectness) targets are the positive's IoU with its box, binary cross-entropy on the
  probabilities over every row; boxes are 1 - GIoU on the positives, weighted by that IoU.

Normalised by the sum of the targets, so the weight against distillation does not depend on the number of
objects in a batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.compress.distill import output_rows
from edgekit.models.loss import giou

TOP_K = 10
RADIUS = 2.5  # strides around a box's centre that still make a cell a candidate
BOX_WEIGHT = 5.0
_STRIDES = (8, 16, 32, 64, 4, 128)
#: Scale sets tried, most common first: every run of consecutive strides (8-16-32 first).
STRIDE_SETS = sorted(
    {tuple(sorted(_STRIDES))[i:j] for i in range(6) for j in range(i + 1, 7)},
    key=lambda s: (s != (8, 16, 32), s != (8, 16, 32, 64), 4 in s or 128 in s, -len(s), s),
)


def row_points(count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's cell centre ``(N, 2)`` and stride ``(N,)`` for a head with ``count`` rows.

    Raises:
        ValueError: No stride set and anchor count (1 or 3) gives ``count`` rows at this input size.
    """
    for strides in STRIDE_SETS:
        cells = [(height // s, width // s) for s in strides]
        per = sum(h * w for h, w in cells)
        for anchors in (1, 3, 2):
            if anchors * per != count or any(height % s or width % s for s in strides):
                continue
            centres, steps = [], []
            for (h, w), s in zip(cells, strides, strict=True):
                gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
                xy = (np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32) + 0.5) * s
                centres.append(np.tile(xy, (anchors, 1)))  # anchor-major within a scale
                steps.append(np.full(anchors * h * w, float(s), np.float32))
            return torch.from_numpy(np.concatenate(centres)), torch.from_numpy(np.concatenate(steps))
    raise ValueError(
        f"{count} output rows are not a YOLO grid of a {height}x{width} input (strides 4-128, 1-3 anchors)"
    )


def _xyxy(xywh: torch.Tensor) -> torch.Tensor:
    return torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every xyxy box in ``a`` (G, 4) with every one in ``b`` (N, 4): (G, N)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-7)


@torch.no_grad()
def assign(
    boxes: torch.Tensor, pred: torch.Tensor, score: torch.Tensor, points: torch.Tensor, strides: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image: each row's assigned box index (-1: background) and its IoU with that box.

    ``boxes`` (G, 4) xyxy labels, ``pred`` (N, 4) xyxy predictions, ``score`` (G, N) each row's score for
    each box's class, ``points`` / ``strides`` from :func:`row_points`.
    """
    n = len(pred)
    owner, overlap = torch.full((n,), -1, dtype=torch.long), torch.zeros(n)
    if len(boxes) == 0:
        return owner, overlap
    px, py = points[:, 0], points[:, 1]
    inside = (
        (px[None] > boxes[:, :1]) & (px[None] < boxes[:, 2:3]) & (py[None] > boxes[:, 1:2])
        & (py[None] < boxes[:, 3:4])
    )  # fmt: skip
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    near = ((points[None] - centre[:, None]).abs() < RADIUS * strides[None, :, None]).all(-1)
    candidate = inside | near
    iou = _pairwise_iou(boxes, pred)
    align = torch.where(candidate, score.clamp(min=1e-9) * iou.pow(6), torch.full_like(iou, -1.0))
    k = min(TOP_K, n)
    top = align.topk(k, dim=1).indices
    chosen = torch.zeros_like(candidate)
    chosen.scatter_(1, top, True)
    chosen &= candidate
    best = torch.where(chosen, iou, torch.full_like(iou, -1.0)).max(0)
    positive = best.values >= 0
    owner[positive] = best.indices[positive]
    overlap[positive] = best.values[positive]
    return owner, overlap


def decoded_detection_loss(
    output: torch.Tensor, head: str, boxes: list, classes: list, input_hw: tuple[int, int]
) -> torch.Tensor:
    """The detection loss of a batch's decoded output against its labels (boxes xyxy in input pixels)."""
    xywh, obj, cls = output_rows(output, head)
    points, strides = row_points(xywh.shape[1], *input_hw)
    pred = _xyxy(xywh)
    total_cls = total_box = xywh.new_zeros(())
    norm = 0.0
    for i in range(len(xywh)):
        gt = torch.as_tensor(np.asarray(boxes[i], np.float32)).reshape(-1, 4)
        gc = torch.as_tensor(np.asarray(classes[i], np.int64)).reshape(-1)
        probs = cls[i] * (obj[i, :, None] if obj is not None else 1.0)
        owner, overlap = assign(gt, pred[i].detach(), probs.detach()[:, gc].T, points, strides)
        positive = owner >= 0
        cls_target = torch.zeros_like(cls[i])
        if positive.any():
            cls_target[positive, gc[owner[positive]]] = overlap[positive] if obj is None else 1.0
            _, g = giou(pred[i][positive], gt[owner[positive]])
            total_box = total_box + ((1 - g) * overlap[positive]).sum()
        if obj is not None:
            obj_target = torch.zeros_like(obj[i])
            obj_target[positive] = overlap[positive]
            total_cls = total_cls + _bce(obj[i], obj_target).sum()
            total_cls = total_cls + _bce(cls[i][positive], cls_target[positive]).sum()
        else:
            total_cls = total_cls + _bce(cls[i], cls_target).sum()
        norm += float(overlap[positive].sum())
    return (total_cls + BOX_WEIGHT * total_box) / max(norm, 1.0)


def _bce(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), target, reduction="none")
