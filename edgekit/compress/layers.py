"""Lightweight conv blocks of Micro-YOLO: depthwise-separable conv (DSConv) and MBConv with squeeze-excite.

Parameter counts (no bias, BN excluded), for ``c_in -> c_out`` with a ``k x k`` kernel:
    standard conv  c_in * c_out * k^2
    DSConv         c_in * k^2 + c_in * c_out                  (depthwise, then 1x1 pointwise)
    MBConv-SE      c_in * h [if expanded] + h * k^2 + 2 * h * h/beta (+ biases) + h * c_out,  h = alpha * c_in
"""

from __future__ import annotations

from torch import nn


def _act() -> nn.Module:
    # LeakyReLU like the reference blocks: quantizes well and keeps conv-BN-act fusable on every runtime.
    return nn.LeakyReLU(0.1, inplace=True)


def round8(value: float) -> int:
    """Round a channel count to a multiple of 8 (at least 8)."""
    return max(8, int(round(value / 8)) * 8)


class DSConv(nn.Module):
    """Depthwise ``k x k`` conv + BN + act, then pointwise 1x1 conv + BN + act."""

    def __init__(self, c_in: int, c_out: int, k: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(c_in, c_in, k, 1, k // 2, groups=c_in, bias=False), nn.BatchNorm2d(c_in), _act()
        )
        self.pointwise = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), _act())

    def forward(self, x):
        """Apply the block."""
        return self.pointwise(self.depthwise(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> 1x1 reduce (ReLU) -> 1x1 expand (sigmoid) -> scale the input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        """Apply the block."""
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand by ``expansion``] -> depthwise ``k x k`` -> SE -> 1x1 project.

    The projection is linear (BN, no activation); a residual is added when input and output widths match.
    """

    def __init__(
        self, c_in: int, c_out: int, k: int = 3, expansion: float = 1.0, se_reduction: int = 4
    ) -> None:
        super().__init__()
        hidden = round8(c_in * expansion) if expansion > 1 else c_in
        self.expand = (
            nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), _act())
            if hidden != c_in
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, k, 1, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), _act()
        )
        self.se = SqueezeExcite(hidden, se_reduction) if se_reduction else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = c_in == c_out

    def forward(self, x):
        """Apply the block."""
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


def conv_params(c_in: int, c_out: int, k: int) -> int:
    """Weights of a standard bias-free conv."""
    return c_in * c_out * k * k


def dsconv_params(c_in: int, c_out: int, k: int) -> int:
    """Conv weights of a :class:`DSConv` (depthwise + pointwise, BN excluded)."""
    return c_in * k * k + c_in * c_out
