"""Detector output decoding and NMS, shared by the device runners and the host (stdlib + numpy only).

Heads (the layouts real exports write):
    ``yolov5``: ``[1, N, 5 + nc]`` rows ``cx, cy, w, h, objectness, class scores...`` (decoded)
    ``yolov8``: ``[1, 4 + nc, N]`` columns ``cx, cy, w, h, class scores...`` (no objectness)
    ``yolox``: ``[1, N, 5 + nc]`` rows as YOLOX exports them without its decode: ``x, y`` offsets in
        grid cells, ``log w, log h`` in strides, then objectness and class probabilities; one anchor per
        cell of strides 8, 16 and 32 (decoded here, to the ``yolov5`` rows).
Coordinates are in network-input pixels; scores are probabilities.
"""

from __future__ import annotations

import numpy as np

HEADS = ("yolov5", "yolov8", "yolox")
#: Strides of a YOLOX head (P3-P5), finest first, as its grids are concatenated.
YOLOX_STRIDES = (8, 16, 32)


def rows(output: np.ndarray, head: str) -> np.ndarray:
    """Return the output of one image as ``(N, C)`` rows, whatever the head layout."""
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError(f"expected batch 1, got output shape {list(out.shape)}")
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"expected a 2-D or 3-D detector output, got shape {list(out.shape)}")
    if head == "yolov8":
        out = out.T
    elif head == "yolox":
        out = decode_yolox(out)
    elif head != "yolov5":
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    return out


def candidates(output: np.ndarray, head: str, conf: float = 0.001, max_candidates: int = 3000) -> np.ndarray:
    """Decode one image's raw output into ``(K, 6)`` rows ``x0, y0, x1, y1, score, class``.

    Keeps the best class per box and at most ``max_candidates`` boxes with ``score >= conf``.
    """
    r = rows(output, head)
    if head in ("yolov5", "yolox"):
        cls_scores = r[:, 5:] * r[:, 4:5] if r.shape[1] > 5 else r[:, 4:5]
    else:
        cls_scores = r[:, 4:]
    cls = cls_scores.argmax(1)
    score = cls_scores[np.arange(len(r)), cls]
    keep = np.nonzero(score >= conf)[0]
    if len(keep) > max_candidates:
        keep = keep[np.argsort(-score[keep], kind="stable")[:max_candidates]]
    xywh = r[keep, :4]
    half = xywh[:, 2:4] / 2
    boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
    out = np.concatenate([boxes, score[keep, None], cls[keep, None].astype(np.float32)], axis=1)
    return out.astype(np.float32)


def yolox_grid(count: int, strides: tuple[int, ...] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Cell corners ``(N, 2)`` and strides ``(N, 1)`` of a square YOLOX input with ``count`` anchors.

    Raises:
        ValueError: ``count`` is not the anchor count of a square input at these strides.
    """
    per_pixel = sum(1.0 / (s * s) for s in strides)
    side = int(round((count / per_pixel) ** 0.5))
    if sum((side // s) ** 2 for s in strides) != count or any(side % s for s in strides):
        raise ValueError(f"{count} anchors are not a square YOLOX grid at strides {list(strides)}")
    cells, steps = [], []
    for s in strides:
        n = side // s
        gy, gx = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel()], -1))
        steps.append(np.full((n * n, 1), float(s), np.float32))
    return np.concatenate(cells), np.concatenate(steps)


def decode_yolox(raw: np.ndarray) -> np.ndarray:
    """Decode YOLOX's raw rows ``(N, 5 + nc)`` into ``yolov5`` rows: ``xy = (t + cell) s``, ``wh = e^t s``."""
    cells, steps = yolox_grid(len(raw))
    xy = (raw[:, :2] + cells) * steps
    wh = np.exp(np.clip(raw[:, 2:4], -20.0, 20.0)) * steps
    return np.concatenate([xy, wh, raw[:, 4:]], 1).astype(np.float32)


def _iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(dets: np.ndarray, iou: float = 0.5, max_det: int = 100) -> np.ndarray:
    """Class-aware greedy NMS over ``(K, 6)`` candidate rows; returns the kept rows, best first."""
    if len(dets) == 0:
        return dets.reshape(0, 6).astype(np.float32)
    # Offsetting boxes by class id keeps classes apart in one pass.
    offset = dets[:, 5:6] * (float(np.abs(dets[:, :4]).max()) + 1.0)
    boxes = dets[:, :4] + offset
    order = np.argsort(-dets[:, 4], kind="stable")
    keep: list[int] = []
    while len(order) and len(keep) < max_det:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        order = rest[_iou_one_to_many(boxes[i], boxes[rest]) <= iou]
    return dets[keep]


def decode_raw(maps: list[np.ndarray], spec: dict, layout: str = "NCHW") -> np.ndarray:
    """Decode raw two-scale maps into ``yolov5`` rows ``[1, N, 5 + nc]`` (what the in-graph decode gives).

    For a device that computes only the prediction convs (an int8 MCU model cannot keep the decode's
    pixel boxes and probabilities in one int8 scale): per map of stride ``s`` and box prior ``p``,
    ``xy = (grid + 2 sigmoid(t) - 0.5) s`` and ``wh = (2 sigmoid(t))^2 p``; scores are ``sigmoid``.

    Args:
        maps: One float map per scale, ``[1, 5 + nc, H, W]`` (NCHW) or ``[1, H, W, 5 + nc]`` (NHWC).
        spec: ``{"maps": [{"stride", "prior"}, ...]}`` in the same order as ``maps``.
        layout: Layout of the maps.
    """
    out = []
    for raw, scale in zip(maps, spec["maps"], strict=True):
        r = np.asarray(raw, dtype=np.float32)
        if layout == "NCHW":
            r = r.transpose(0, 2, 3, 1)
        _, h, w, c = r.shape
        p = 1.0 / (1.0 + np.exp(-r.reshape(h * w, c)))
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        grid = np.stack([gx.ravel(), gy.ravel()], -1)
        xy = (grid + p[:, :2] * 2 - 0.5) * float(scale["stride"])
        wh = (p[:, 2:4] * 2) ** 2 * float(scale["prior"])
        out.append(np.concatenate([xy, wh, p[:, 4:]], -1))
    return np.concatenate(out, 0)[None].astype(np.float32)
