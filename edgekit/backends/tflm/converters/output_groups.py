"""Split a program's final prediction convs into channel groups, so each group gets its own int8 scale.

A detector's raw map mixes channels of very different ranges: YOLO box sizes (logits within ±1), box
offsets (±4) and objectness/class logits (down to -17). One int8 scale per output makes the step of the
widest group (~0.08) the step of all of them, which costs the box sizes most of their precision (on the
128 px reference: 0.55 points of mAP@0.5:0.95 from the output rounding alone, 0.05 with the groups below).
So each final conv is replaced by one conv per group of channels with a similar range (the same weights,
sliced), and the runner puts the dequantized groups back in channel order.

Used by ``litert_pt2e.py`` in the converter environment (torch + numpy only).

Example:
    >>> channel_groups([0.9, 4.0, 0.8, 15.0, 11.0])
    [[0, 2], [1], [3, 4]]
"""

from __future__ import annotations

import math

import numpy as np

#: Two channels whose calibration ranges differ by more than this may go to different groups.
MIN_GAP = 2.0
MAX_GROUPS = 3


def channel_groups(ranges, min_gap: float = MIN_GAP, max_groups: int = MAX_GROUPS) -> list[list[int]]:
    """Group channels by their range: cut the sorted log-ranges at their widest gaps wider than ``min_gap``.

    Args:
        ranges: Per-channel max |value| on the calibration set.
        min_gap: Smallest ratio between neighbouring sorted ranges that may separate two groups.
        max_groups: At most this many groups.

    Returns:
        Channel indices per group, each group ascending, groups ordered by their first channel.
    """
    r = np.maximum(np.asarray(ranges, dtype=np.float64), 1e-6)
    order = np.argsort(r, kind="stable")
    logs = np.log(r[order])
    gaps = np.diff(logs)
    cuts = [int(i) for i in np.argsort(-gaps, kind="stable")[: max_groups - 1] if gaps[i] > math.log(min_gap)]
    bounds = [0, *sorted(c + 1 for c in cuts), len(order)]
    groups = [sorted(int(c) for c in order[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return sorted(groups, key=lambda g: g[0])


def split_output_convs(module, calib: np.ndarray):
    """Wrap ``module`` (an ``ExportedProgram.module()``) so each conv-made output is split by range.

    Args:
        module: The float program's module; its outputs are the raw maps ``(N, C, H, W)``.
        calib: ``(N, 3, H, W)`` float calibration images (the ranges are taken on up to 32 of them).

    Returns:
        ``(new_module, groups)``: the module returning every group as its own output (map order, then
        group order) and, per original output, its channel groups (one group = not split).
    """
    out_node = next(n for n in module.graph.nodes if n.op == "output")
    outs = list(out_node.args[0])
    ranges = _output_ranges(module, calib[:32])
    convs, groups = [], []
    for node, y in zip(outs, ranges, strict=True):
        conv = _conv_params(module, node)
        g = channel_groups(y.flatten().numpy()) if conv is not None and y.ndim == 4 else None
        if conv is None or g is None or len(g) == 1:
            convs.append(None)
            groups.append([list(range(int(y.shape[1])))] if y.ndim == 4 else None)
            continue
        convs.append(conv)
        groups.append(g)
    if all(c is None for c in convs):
        return module, groups
    # the inner module returns each split conv's input instead of its output
    out_node.args = (
        tuple(node.args[0] if c is not None else node for node, c in zip(outs, convs, strict=True)),
    )
    module.graph.eliminate_dead_code()
    module.recompile()
    return GroupedHead(module, convs, groups), groups


def _output_ranges(module, images: np.ndarray) -> list:
    """Per output, max |value| per channel over ``images`` (one at a time: the program is batch 1)."""
    import torch

    out = None
    with torch.no_grad():
        for x in images:
            ys = [
                y.abs().amax(dim=(0, 2, 3), keepdim=True) if y.ndim == 4 else y
                for y in module(torch.from_numpy(x[None]))
            ]
            out = ys if out is None else [torch.maximum(a, b) for a, b in zip(out, ys, strict=True)]
    return out


def _conv_params(module, node):
    """``(weight, bias, stride, padding, dilation)`` of an ungrouped ``aten.conv2d`` with constant weights."""
    import torch

    if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default:
        return None
    args = list(node.args) + [None] * (7 - len(node.args))
    x, w, b, stride, padding, dilation, groups = args
    if groups not in (None, 1) or getattr(w, "op", None) != "get_attr":
        return None
    if b is not None and getattr(b, "op", None) != "get_attr":
        return None
    fetch = lambda n: _attr(module, n.target) if n is not None else None  # noqa: E731
    return (fetch(w), fetch(b), stride or [1, 1], padding or [0, 0], dilation or [1, 1])


def _attr(module, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach().clone()


def GroupedHead(inner, convs, groups):  # noqa: N802 - a class factory: torch is imported lazily
    """The inner module, then each split conv as one conv per channel group."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    class _GroupedHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.specs = []
            for i, (conv, g) in enumerate(zip(convs, groups, strict=True)):
                if conv is None:
                    self.specs.append(None)
                    continue
                w, b, stride, padding, dilation = conv
                for j, chans in enumerate(g):
                    idx = torch.tensor(chans)
                    bias = None if b is None else torch.nn.Parameter(b[idx].contiguous(), requires_grad=False)
                    self.register_parameter(
                        f"w{i}_{j}", torch.nn.Parameter(w[idx].contiguous(), requires_grad=False)
                    )
                    self.register_parameter(f"b{i}_{j}", bias)
                self.specs.append((len(g), list(stride), list(padding), list(dilation)))

        def forward(self, x):
            outs = []
            for i, y in enumerate(self.inner(x)):
                spec = self.specs[i]
                if spec is None:
                    outs.append(y)
                    continue
                n, stride, padding, dilation = spec
                for j in range(n):
                    w, b = getattr(self, f"w{i}_{j}"), getattr(self, f"b{i}_{j}")
                    outs.append(F.conv2d(y, w, b, stride, padding, dilation))
            return tuple(outs)

    head = _GroupedHead()
    head.training = False  # not .eval(): an exported program's module refuses train()/eval()
    return head
