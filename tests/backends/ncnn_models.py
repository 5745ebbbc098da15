"""Tiny models and structured synthetic images for the ncnn tests (built in code, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZE = 64
CHANNELS_OUT = 7  # 4 box + 1 objectness + 2 classes per anchor point


def _cba(c_in: int, c_out: int, k: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out), act())


class TinyDetector(nn.Module):
    """Conv-BN-SiLU at stride 2 and 4, a 3x3 stride-1 Conv-BN-ReLU into a depthwise conv, a stride-8
    stage, nearest upsample + concat, and 1x1 prediction convs at stride 4 and 8 -> (1, 7, 320)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cba(3, 8, 3, 2, nn.SiLU)
        self.down4 = _cba(8, 16, 3, 2, nn.SiLU)
        self.body = _cba(16, 16, 3, 1, nn.ReLU)
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.down8 = _cba(16, 32, 3, 2, nn.SiLU)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = _cba(48, 16, 1, 1, nn.ReLU)
        self.head4 = nn.Conv2d(16, CHANNELS_OUT, 1)
        self.head8 = nn.Conv2d(32, CHANNELS_OUT, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p4 = self.depthwise(self.body(self.down4(self.stem(x))))
        p8 = self.down8(p4)
        neck = self.neck(torch.cat([p4, self.up(p8)], 1))
        return torch.cat([self.head4(neck).flatten(2), self.head8(p8).flatten(2)], 2)


class StridedSlice(nn.Module):
    """YOLOv5's Focus: four strided slices that pnnx cannot lower to ncnn."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(parts, 1))


def synthetic_images(count: int, seed: int, size: int = SIZE) -> list[np.ndarray]:
    """Structured images in [0, 1]: a tinted sinusoidal background, three flat rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        wave = (1 + np.sin(xx * rng.uniform(2, 12) + yy * rng.uniform(2, 12))) / 2
        img = rng.uniform(0.1, 0.5, (3, 1, 1)) * wave
        for _ in range(3):
            x0, y0 = rng.integers(0, size - 16, 2)
            w, h = rng.integers(6, 24, 2)
            img[:, y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, (3, 1))[..., None]
        img = img + rng.normal(0, 0.03, img.shape)
        images.append(np.clip(img, 0, 1)[None].astype(np.float32))
    return images
