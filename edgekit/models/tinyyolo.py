"""A YOLOv3-tiny-style reference detector sized for 160 px inputs (~0.42 M params, ~0.16 GMAC).

Conv-BN-LeakyReLU blocks with max-pooling, two prediction scales (stride 16 and, through a 1x1 route,
x2 upsample and concat, stride 8), one box per cell and scale. In eval mode the decode runs inside the
graph, so the ONNX output is the Ultralytics ``yolov5`` layout ``[1, N, 5 + nc]`` in input pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyYoloConfig:
    """Architecture of :class:`TinyYolo` (``width`` scales every channel count)."""

    num_classes: int = 6
    input_size: int = 160
    width: float = 1.0
    priors: tuple[float, float] = (16.0, 36.0)  # box-size prior (px) at stride 8 and 16

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and cache keys)."""
        return asdict(self)


def conv_bn_act(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + LeakyReLU(0.1), the YOLOv3-tiny block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


class Decode(nn.Module):
    """Turn one scale's raw map ``[B, 5+nc, H, W]`` into rows ``[B, H*W, 5+nc]`` (pixels, probabilities)."""

    def __init__(self, stride: int, prior: float) -> None:
        super().__init__()
        self.stride, self.prior = stride, prior

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Decode one raw map."""
        b, c, h, w = raw.shape
        p = raw.sigmoid().permute(0, 2, 3, 1).reshape(b, h * w, c)
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=raw.dtype), torch.arange(w, dtype=raw.dtype), indexing="ij"
        )
        grid = torch.stack([gx, gy], -1).reshape(1, h * w, 2)
        xy = (grid + p[..., :2] * 2 - 0.5) * self.stride
        wh = (p[..., 2:4] * 2) ** 2 * self.prior
        return torch.cat([xy, wh, p[..., 4:]], -1)


class TwoScaleDetector(nn.Module):
    """The topology both reference detectors share (TinyYolo and Micro-YOLO).

    Features at stride 8 and 16, a 1x1 route with x2 upsample and concat into the fine head, one 1x1
    prediction conv per scale, and the in-graph decode in eval mode.

    Subclasses build ``stem``, ``p8``, ``p16``, ``neck16``, ``pred16``, ``route``, ``neck8``, ``pred8``,
    ``decode8`` and ``decode16``; training, evaluation, pruning and export only rely on this interface.
    """

    strides = (8, 16)
    head = "yolov5"

    def prediction_layers(self) -> list[nn.Module]:
        """The final 1x1 prediction convs (never pruned, kept in float when quantizing)."""
        return [self.pred8, self.pred16]

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw prediction maps at stride 8 and 16."""
        f8 = self.p8(self.stem(x))
        f16 = self.neck16(self.p16(f8))
        fine = self.neck8(torch.cat([self.route(f16), f8], 1))
        return [self.pred8(fine), self.pred16(f16)]

    def forward(self, x: torch.Tensor):
        """Raw maps in training mode, decoded ``[B, N, 5 + nc]`` rows in eval mode."""
        raw = self.raw(x)
        if self.training:
            return raw
        return torch.cat([self.decode8(raw[0]), self.decode16(raw[1])], 1)


class TinyYolo(TwoScaleDetector):
    """The reference detector.

    ``forward`` returns the raw maps ``[stride8, stride16]`` in training mode and the decoded
    ``[B, N, 5 + nc]`` rows in eval mode.

    Example:
        >>> model = TinyYolo(TinyYoloConfig(num_classes=6)).eval()
        >>> model(torch.zeros(1, 3, 160, 160)).shape
        torch.Size([1, 500, 11])
    """

    def __init__(self, cfg: TinyYoloConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TinyYoloConfig()
        c = [max(8, int(round(v * cfg.width / 8)) * 8) for v in (16, 32, 64, 128, 128, 64, 32)]
        no = 5 + cfg.num_classes
        pool = nn.MaxPool2d(2, 2)
        self.stem = nn.Sequential(
            conv_bn_act(3, c[0]), pool, conv_bn_act(c[0], c[1]), pool, conv_bn_act(c[1], c[2]), pool
        )
        self.p8 = conv_bn_act(c[2], c[3])  # stride 8 features, routed to the fine head
        self.p16 = nn.Sequential(pool, conv_bn_act(c[3], c[4]))
        self.neck16 = nn.Sequential(conv_bn_act(c[4], c[5], 1), conv_bn_act(c[5], c[4]))
        self.pred16 = nn.Conv2d(c[4], no, 1)
        self.route = nn.Sequential(conv_bn_act(c[4], c[6], 1), nn.Upsample(scale_factor=2, mode="nearest"))
        self.neck8 = conv_bn_act(c[6] + c[3], c[5])
        self.pred8 = nn.Conv2d(c[5], no, 1)
        self.decode8 = Decode(8, cfg.priors[0])
        self.decode16 = Decode(16, cfg.priors[1])
        for pred in (self.pred8, self.pred16):  # start with low objectness so early training is stable
            nn.init.constant_(pred.bias[4], -4.0)
