"""YOLO-style detection loss: GIoU box loss, IoU-aware objectness, class BCE.

Target assignment: each box goes to the scale whose size prior is nearest (log ratio), to its centre cell
and the two nearest neighbour cells (the YOLOv5 rule); a contested cell goes to the smaller box.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def build_targets(
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    shapes: list[tuple[int, int]],
    strides: tuple[int, ...],
    priors: tuple[float, ...],
) -> list[dict[str, torch.Tensor]]:
    """Per scale: ``pos`` (B,H,W) bool, ``box`` (B,H,W,4) xyxy px, ``cls`` (B,H,W) long."""
    out = []
    for (h, w), _stride in zip(shapes, strides, strict=True):
        b = len(boxes)
        out.append(
            {
                "pos": np.zeros((b, h, w), bool),
                "box": np.zeros((b, h, w, 4), np.float32),
                "cls": np.zeros((b, h, w), np.int64),
            }
        )
    log_priors = np.log(np.asarray(priors))
    for i, (bxs, cls) in enumerate(zip(boxes, classes, strict=True)):
        order = np.argsort(-(bxs[:, 2] - bxs[:, 0]) * (bxs[:, 3] - bxs[:, 1]))  # large first, small overwrite
        for j in order:
            x0, y0, x1, y1 = bxs[j]
            size = max(x1 - x0, y1 - y0, 1.0)
            s = int(np.argmin(np.abs(np.log(size) - log_priors)))
            t, stride = out[s], strides[s]
            h, w = shapes[s]
            gx, gy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            cx, cy = min(int(gx), w - 1), min(int(gy), h - 1)
            nx = cx - 1 if gx - cx < 0.5 else cx + 1
            ny = cy - 1 if gy - cy < 0.5 else cy + 1
            for ux, uy in ((cx, cy), (nx, cy), (cx, ny)):
                if 0 <= ux < w and 0 <= uy < h:
                    t["pos"][i, uy, ux] = True
                    t["box"][i, uy, ux] = (x0, y0, x1, y1)
                    t["cls"][i, uy, ux] = cls[j]
    return [{k: torch.from_numpy(v) for k, v in t.items()} for t in out]


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of paired xyxy boxes ``(K, 4)``."""
    ix = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(0)
    iy = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(0)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]).clamp(0) * (a[:, 3] - a[:, 1]).clamp(0)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    cw = torch.max(a[:, 2], b[:, 2]) - torch.min(a[:, 0], b[:, 0])
    ch = torch.max(a[:, 3], b[:, 3]) - torch.min(a[:, 1], b[:, 1])
    hull = cw * ch + 1e-7
    return iou, iou - (hull - union) / hull


def decode_raw(raw: torch.Tensor, stride: int, prior: float) -> torch.Tensor:
    """Raw map ``[B, C, H, W]`` → ``[B, H, W, C]`` with xyxy boxes in pixels and logits kept for obj/cls."""
    b, c, h, w = raw.shape
    r = raw.permute(0, 2, 3, 1)
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = (torch.stack([gx, gy], -1) + r[..., :2].sigmoid() * 2 - 0.5) * stride
    wh = (r[..., 2:4].sigmoid() * 2) ** 2 * prior
    return torch.cat([xy - wh / 2, xy + wh / 2, r[..., 4:]], -1)


def detection_loss(
    raw: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    strides,
    priors,
    obj_weight: float = 4.0,
    cls_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of box, objectness and class terms over scales; also returns the parts for logging."""
    box_l = obj_l = cls_l = raw[0].new_zeros(())
    for r, t, stride, prior in zip(raw, targets, strides, priors, strict=True):
        d = decode_raw(r, stride, prior)
        pos = t["pos"]
        obj_target = torch.zeros_like(d[..., 4])
        if pos.any():
            iou, g = giou(d[pos][:, :4], t["box"][pos])
            box_l = box_l + (1 - g).mean()
            obj_target[pos] = iou.detach().clamp(0).to(obj_target.dtype)
            onehot = F.one_hot(t["cls"][pos], d.shape[-1] - 5).to(d.dtype)
            cls_l = cls_l + F.binary_cross_entropy_with_logits(d[pos][:, 5:], onehot)
        obj_l = obj_l + F.binary_cross_entropy_with_logits(d[..., 4], obj_target)
    total = box_l + obj_weight * obj_l + cls_weight * cls_l
    return total, {"box": float(box_l.detach()), "obj": float(obj_l.detach()), "cls": float(cls_l.detach())}
