"""Two detectors edgekit did not write, for tests and the bench: handed to edgekit as ONNX files alone.

``V8Det`` follows YOLOv8n's layout (Conv-BN-SiLU, C2f with its chunk, SPPF, a PAN neck, a decoupled head
with a DFL box branch; output ``[1, 4 + nc, N]``, boxes decoded to pixels). ``V5Det`` follows YOLOv5n's
(C3 blocks, SPPF, three anchors per cell, output ``[1, N, 5 + nc]`` with the sigmoid-power decode). They are
small (widths 16..64) so a CPU test can import, prune, train and export them in seconds.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv(nn.Sequential):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1, self.cv2 = Conv(c1, 2 * self.c), Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))  # as Ultralytics' exported C2f
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c), Conv(c1, c), Conv(2 * c, c2)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1, self.cv2, self.pool = Conv(c1, c1 // 2), Conv(c1 * 2, c2), nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class _Backbone(nn.Module):
    """Stride 8 / 16 / 32 features and a PAN neck, with C2f (``v8``) or C3 (``v5``) blocks."""

    def __init__(self, block: type, w: tuple[int, int, int] = (32, 48, 64)) -> None:
        super().__init__()
        a, b, c = w
        self.stem = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 24, 3, 2), block(24, 24))
        self.p3 = nn.Sequential(Conv(24, a, 3, 2), block(a, a))
        self.p4 = nn.Sequential(Conv(a, b, 3, 2), block(b, b))
        self.p5 = nn.Sequential(Conv(b, c, 3, 2), block(c, c), SPPF(c, c))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4, self.td3 = block(c + b, b, shortcut=False), block(b + a, a, shortcut=False)
        self.dn3, self.bu4 = Conv(a, a, 3, 2), block(a + b, b, shortcut=False)
        self.dn4, self.bu5 = Conv(b, b, 3, 2), block(b + c, c, shortcut=False)

    def forward(self, x):
        x3 = self.p3(self.stem(x))
        x4 = self.p4(x3)
        x5 = self.p5(x4)
        t4 = self.td4(torch.cat([self.up(x5), x4], 1))
        o3 = self.td3(torch.cat([self.up(t4), x3], 1))
        o4 = self.bu4(torch.cat([self.dn3(o3), t4], 1))
        o5 = self.bu5(torch.cat([self.dn4(o4), x5], 1))
        return [o3, o4, o5]


def _grid(size: int, strides=(8, 16, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    cells, steps = [], []
    for s in strides:
        n = size // s
        gy, gx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cells.append(torch.stack([gx, gy], -1).reshape(-1, 2).float() + 0.5)
        steps.append(torch.full((n * n, 1), float(s)))
    return torch.cat(cells), torch.cat(steps)


class V8Det(nn.Module):
    """YOLOv8n-style: C2f, SPPF, decoupled head, DFL (``reg_max`` bins per side); ``[1, 4 + nc, N]``."""

    def __init__(self, nc: int = 6, size: int = 160, reg_max: int = 8) -> None:
        super().__init__()
        self.body, self.nc, self.reg_max = _Backbone(C2f), nc, reg_max
        chans = (32, 48, 64)
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, 32, 3), Conv(32, 32, 3), nn.Conv2d(32, 4 * reg_max, 1)) for c in chans
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, 32, 3), Conv(32, 32, 3), nn.Conv2d(32, nc, 1)) for c in chans
        )
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        cells, steps = _grid(size)
        self.register_buffer("cells", cells.T.unsqueeze(0))
        self.register_buffer("steps", steps.T.unsqueeze(0))

    def raw(self, x):
        """Per scale: ``(box distribution [B, 4 * reg_max, H, W], class logits [B, nc, H, W])``."""
        return [(b(f), c(f)) for f, b, c in zip(self.body(x), self.box, self.cls, strict=True)]

    def forward(self, x):
        maps = self.raw(x)
        box = torch.cat([b.flatten(2) for b, _ in maps], 2)
        cls = torch.cat([c.flatten(2) for _, c in maps], 2)
        n = box.shape[2]
        dist = self.dfl(box.view(box.shape[0], 4, self.reg_max, n).transpose(2, 1).softmax(1)).view(-1, 4, n)
        lt, rb = dist.chunk(2, 1)
        x0y0, x1y1 = self.cells - lt, self.cells + rb
        xywh = torch.cat([(x0y0 + x1y1) / 2, x1y1 - x0y0], 1) * self.steps
        return torch.cat([xywh, cls.sigmoid()], 1)


class V5Det(nn.Module):
    """YOLOv5n-style: C3, SPPF, three anchors per cell; ``[1, N, 5 + nc]`` decoded to pixels."""

    ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))

    def __init__(self, nc: int = 6, size: int = 160) -> None:
        super().__init__()
        self.body, self.nc, self.no = _Backbone(C3), nc, 5 + nc
        self.m = nn.ModuleList(nn.Conv2d(c, 3 * self.no, 1) for c in (32, 48, 64))
        self.size = size
        scale = size / 640  # the anchors are COCO's at 640 px
        for i, (a, s) in enumerate(zip(self.ANCHORS, (8, 16, 32), strict=True)):
            n = size // s
            gy, gx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            grid = torch.stack([gx, gy], -1).view(1, 1, n, n, 2).float()
            wh = (torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1, 2) * scale).expand(1, 3, n, n, 2)
            self.register_buffer(f"grid{i}", grid)
            self.register_buffer(f"anchor{i}", wh.contiguous())

    def raw(self, x):
        """Per scale: ``[B, 3 * (5 + nc), H, W]``."""
        return [m(f) for m, f in zip(self.m, self.body(x), strict=True)]

    def forward(self, x):
        out = []
        for i, (r, s) in enumerate(zip(self.raw(x), (8, 16, 32), strict=True)):
            b, _, h, w = r.shape
            y = r.view(b, 3, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            xy = (y[..., :2] * 2 - 0.5 + getattr(self, f"grid{i}")) * s
            wh = (y[..., 2:4] * 2) ** 2 * getattr(self, f"anchor{i}")
            out.append(torch.cat([xy, wh, y[..., 4:]], -1).view(b, -1, self.no))
        return torch.cat(out, 1)
