"""Start a swapped architecture from its teacher instead of from random weights (block-wise hint training).

The swap step replaces each 3x3 conv block of the reference by a DSConv or MBConv-SE block. Trained from
random weights, the new model throws away everything the reference learnt, and a recipe that does so loses
to its own control (the same architecture trained from scratch as long as reference + recipe). Here the
student inherits the reference instead, in two moves:

1. every layer whose parameters have the same shapes in both models (the first conv, the 1x1 convs, the
   prediction convs) is copied;
2. every swapped block is fitted to reproduce its teacher block's output from the teacher block's input
   (the teacher's features, captured by forward hooks on training images), all blocks at once, each with
   its own normalised squared error - a local regression per block, as in FitNets' hint training, cheap
   because no gradient crosses the network.

The fitted student is then trained end to end (with distillation) by the swap step as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.errors import CompressionError
from edgekit.progress import track

#: A fitted block starts at this fraction of the teacher's per-channel std (60 steps on the converged
#: reference: normalised error 0.29-0.69 per block at 0.1 and lr 1e-2; 0.31-0.81 at 1.0; 0.41-1.12 at 1.0
#: and lr 3e-3).
START_GAIN = 0.1

#: The stages both detectors share (``TwoScaleDetector``), walked in forward order.
_STAGES = ("stem", "p8", "p16", "neck16", "pred16", "route", "neck8", "pred8")


def _shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _blocks(stage: nn.Module) -> list[nn.Module]:
    """A stage's blocks: the children of a Sequential of blocks, else the stage itself (a conv block)."""
    if isinstance(stage, nn.Sequential) and not any(isinstance(c, nn.Conv2d) for c in stage.children()):
        return list(stage)  # not .children(): that drops a module used twice (the shared pool)
    return [stage]


def block_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[tuple[str, nn.Module, nn.Module]], ...]:
    """Match the two detectors' blocks stage by stage: ``(copy, fit)`` lists of ``(name, student, teacher)``.

    ``copy`` holds blocks with identical parameter shapes; ``fit`` holds blocks that differ (a swapped
    block against the conv block it replaces). Blocks without parameters (pools, upsampling) are skipped.

    Raises:
        CompressionError: The models do not share the two-scale topology, or a matched pair has
            different output widths (the swap changed the width, so no block can stand in for another).
    """
    copy_pairs, fit_pairs = [], []
    for stage in _STAGES:
        s, t = getattr(student, stage, None), getattr(teacher, stage, None)
        if s is None or t is None:
            raise CompressionError(
                f"the teacher init needs both models to have the stage {stage!r}",
                "use init: random in the swap step for a model that is not an edgekit detector",
            )
        s_children, t_children = _blocks(s), _blocks(t)
        if len(s_children) != len(t_children):
            raise CompressionError(
                f"stage {stage!r} has {len(s_children)} blocks in the student and {len(t_children)} in "
                "the teacher",
                "use init: random in the swap step",
            )
        for i, (sc, tc) in enumerate(zip(s_children, t_children, strict=True)):
            name = stage if len(s_children) == 1 else f"{stage}.{i}"
            if not list(sc.parameters()):
                continue
            if _shapes(sc) == _shapes(tc):
                copy_pairs.append((name, sc, tc))
                continue
            s_out = [m for m in sc.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            t_out = [m for m in tc.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            if s_out != t_out:
                raise CompressionError(
                    f"block {name} has {s_out} output channels in the student and {t_out} in the teacher",
                    "the teacher init needs the swap at width 1 (the teacher's widths); use init: random "
                    "with another width",
                )
            fit_pairs.append((name, sc, tc))
    return copy_pairs, fit_pairs


@torch.no_grad()
def match_moments(block: nn.Module, inp: torch.Tensor, target: torch.Tensor, gain: float = 1.0) -> None:
    """Set ``block``'s last BatchNorm: its output gets ``target``'s per-channel mean and ``gain`` x its std.

    A fresh BN outputs unit variance while the teacher's features have their own scale per channel; an
    optimiser then spends most of the fit moving the BN scales. The part of the output that does not pass
    through that BN (an MBConv's residual) is measured with the BN zeroed and taken out first. A small
    ``gain`` starts the block near the teacher's mean (error ~1) instead of at the matched-but-uncorrelated
    std (error ~2), with the gradient still flowing through it.
    """
    bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    was_training = block.training
    block.eval()
    bn.weight.zero_()
    bn.bias.zero_()
    seen: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        rest = target - block(inp)
    finally:
        handle.remove()
    bn.running_mean.copy_(seen[0].mean((0, 2, 3)))  # so that eval mode normalises as the batch did
    bn.running_var.copy_(seen[0].var((0, 2, 3), unbiased=False))
    bn.weight.copy_(gain * rest.std((0, 2, 3)).clamp_min(1e-3))
    bn.bias.copy_(rest.mean((0, 2, 3)))
    block.train(was_training)


def init_from_teacher(
    student: nn.Module, teacher: nn.Module, data: Any, spec: Any, progress: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Copy the shared layers of ``teacher`` into ``student`` and fit its swapped blocks; return the stats.

    ``spec`` is the swap's :class:`~edgekit.compress.recipe.TeacherInitSpec` (``epochs`` over ``data``,
    ``lr``, ``batch_size``). Each fitted block's loss is its squared error divided by the variance of the
    teacher's output, so 0 is a perfect copy and 1 is no better than a constant (a residual block can start
    above 1: its input is added to what it learns); the mean per block over the first and the last epoch
    are returned as ``fit_loss_first_epoch`` and ``fit_loss``.
    """
    copy_pairs, fit_pairs = block_pairs(student, teacher)
    for _, s, t in copy_pairs:
        s.load_state_dict(t.state_dict())
    copied = [name for name, _, _ in copy_pairs]
    if not fit_pairs:  # nothing was swapped: the copy is the whole init
        return {"copied": copied, "fitted": [], "steps": 0, "fit_loss_first_epoch": {}, "fit_loss": {}}
    teacher = teacher.eval()
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        t.register_forward_hook(lambda _m, args, out, name=name: captured.__setitem__(name, (args[0], out)))
        for name, _, t in fit_pairs
    ]
    x, _, _ = data.batch(np.arange(min(len(data), spec.batch_size)))
    with torch.no_grad():
        teacher.raw(x)
        for name, s, _ in fit_pairs:
            match_moments(s, *captured[name], gain=START_GAIN)
    steps_per_epoch = max(1, len(data) // spec.batch_size)
    total = max(1, int(round(spec.epochs * steps_per_epoch)))
    opt = torch.optim.Adam([p for _, s, _ in fit_pairs for p in s.parameters()], lr=spec.lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    per_block = {name: [] for name, _, _ in fit_pairs}
    first = {name: [] for name, _, _ in fit_pairs}
    for _, s, _ in fit_pairs:
        s.train()
    try:
        with track(total, "fitting swapped blocks to the teacher", progress) as advance:
            for step in range(total):
                if step % steps_per_epoch == 0:
                    order = rng.permutation(len(data))
                for group in opt.param_groups:
                    group["lr"] = spec.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                k = step % steps_per_epoch
                idx = order[k * spec.batch_size : (k + 1) * spec.batch_size]
                x, _, _ = data.batch(idx, rng.random(len(idx)) < 0.5)
                with torch.no_grad():
                    teacher.raw(x)
                loss = x.new_zeros(())
                for name, s, _ in fit_pairs:
                    inp, target = captured[name]
                    err = ((s(inp.detach()) - target.detach()) ** 2).mean() / (target.var() + 1e-6)
                    loss = loss + err
                    if step < steps_per_epoch:
                        first[name].append(float(err.detach()))
                    if step >= total - steps_per_epoch:
                        per_block[name].append(float(err.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                advance(info=f"loss {float(loss.detach()) / len(fit_pairs):.3f}")
    finally:
        for h in handles:
            h.remove()
    student.eval()
    return {
        "copied": copied,
        "fitted": [name for name, _, _ in fit_pairs],
        "steps": total,
        "fit_loss_first_epoch": {name: round(float(np.mean(v)), 4) for name, v in first.items() if v},
        "fit_loss": {name: round(float(np.mean(v)), 4) for name, v in per_block.items() if v},
    }
