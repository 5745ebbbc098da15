"""Start a swapped architecture from its teacher instead of from random weights (block-wise hint training).

The swap step replaces each 3x3 conv block of the reference by a DSConv or MBConv-SE block. Trained from
random weights, the new model throws away everything the reference learnt, and a recipe that does so loses
to its own control (the same architecture trained from scratch as long as reference + recipe). Here the
student inherits the reference instead, in three moves:

1. every layer that is the same kind of layer in both models (the first conv, the 1x1 convs, the
   prediction convs) is copied; when the swap widens the model, Net2WiderNet's function-preserving copy:
   each extra student channel repeats a teacher channel, and a layer reading repeated channels divides
   their weights by the repeat count, so the copied layer computes what the teacher's does;
2. every swapped block is fitted to reproduce its teacher block's output (its channels mapped the same
   way) from the teacher block's input - all blocks at once, each with its own normalised squared error, a
   local regression per block as in FitNets' hint training, cheap because no gradient crosses the network;
3. for the last ``student_fed`` part of the fit, each block reads the *student's* features instead (the
   input detached, so the regression stays local): a block then learns to undo what the blocks before it
   got wrong, which the first move cannot teach - fitted on the teacher's inputs alone, per-block errors
   compound and the composed model starts near 0 mAP.

The fitted student is then trained end to end (with distillation) by the swap step as before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.compress.distill import distill_hook
from edgekit.core.errors import CompressionError
from edgekit.core.progress import track

#: A fitted block starts at this fraction of the teacher's per-channel std (60 steps on the converged
#: reference: normalised error 0.29-0.69 per block at 0.1 and lr 1e-2; 0.31-0.81 at 1.0; 0.41-1.12 at 1.0
#: and lr 3e-3).
START_GAIN = 0.1

#: The blocks both detectors share (``TwoScaleDetector.raw``) in forward order, each with the features it
#: reads: ``(submodule name, inputs)``; "image" is the network input, and a block's own name is its
#: output. Pools and the upsample carry no parameters and keep the channel order.
_FLOW: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stem.0", ("image",)),
    ("stem.2", ("stem.0",)),
    ("stem.4", ("stem.2",)),
    ("p8", ("stem.4",)),
    ("p16.1", ("p8",)),
    ("neck16.0", ("p16.1",)),
    ("neck16.1", ("neck16.0",)),
    ("pred16", ("neck16.1",)),
    ("route.0", ("neck16.1",)),
    ("neck8", ("route.0", "p8")),
    ("pred8", ("neck8",)),
)
_OUTPUTS = ("pred8", "pred16")  # their channels are the head's: never remapped


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _layout(module: nn.Module) -> list[tuple[type, tuple[int, ...], int]]:
    """Layer kinds with their kernel and group shape: equal layouts can be copied whatever the widths."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            out.append((nn.Conv2d, tuple(m.kernel_size), 1 if m.groups == 1 else -1))
        elif isinstance(m, nn.BatchNorm2d):
            out.append((nn.BatchNorm2d, (), 0))
    return out


def _block(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CompressionError(
            f"the teacher init needs both models to have the block {name!r}",
            "use init: random in the swap step for a model that is not an edgekit detector",
        ) from None


def _normalised_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over the target's variance: 0 is a perfect copy, 1 no better than its mean."""
    return ((pred - target) ** 2).mean() / (target.var() + 1e-6)


def block_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[tuple[str, nn.Module, nn.Module]], ...]:
    """Match the two detectors' blocks: ``(copy, fit)`` lists of ``(name, student, teacher)``.

    ``copy`` holds blocks built from the same layers (equal kernels, any widths); ``fit`` holds blocks
    that differ (a swapped block against the conv block it replaces).

    Raises:
        CompressionError: The models do not share the two-scale topology, or the student is narrower
            than the teacher somewhere (no channel of the teacher may be dropped).
    """
    copy_pairs, fit_pairs = [], []
    for name, _ in _FLOW:
        s, t = _block(student, name), _block(teacher, name)
        s_out, t_out = _convs(s)[-1].out_channels, _convs(t)[-1].out_channels
        if s_out < t_out:
            raise CompressionError(
                f"block {name} has {s_out} output channels in the student and {t_out} in the teacher",
                "the teacher init needs the swap at width 1 or wider; use init: random with a width below 1",
            )
        (copy_pairs if _layout(s) == _layout(t) else fit_pairs).append((name, s, t))
    return copy_pairs, fit_pairs


def channel_maps(student: nn.Module, teacher: nn.Module, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """For each feature, the teacher channel every student channel stands for (Net2WiderNet's mapping).

    The first teacher-width channels map to themselves; each extra channel repeats a teacher channel drawn
    at random. A concatenation's map is its parts' maps, the second offset by the first's teacher width.
    """
    maps: dict[str, torch.Tensor] = {"image": torch.arange(_convs(_block(student, "stem.0"))[0].in_channels)}
    for name, _ in _FLOW:
        c_s = _convs(_block(student, name))[-1].out_channels
        c_t = _convs(_block(teacher, name))[-1].out_channels
        extra = torch.as_tensor(rng.integers(0, c_t, c_s - c_t), dtype=torch.long)
        maps[name] = torch.arange(c_t) if name in _OUTPUTS else torch.cat([torch.arange(c_t), extra])
    return maps


def _input_map(maps: dict[str, torch.Tensor], inputs: tuple[str, ...]) -> torch.Tensor:
    """The map of a block's input: its features' maps, each offset by the teacher widths before it."""
    parts, offset = [], 0
    for feature in inputs:
        parts.append(maps[feature] + offset)
        offset += int(maps[feature].max()) + 1  # a map starts with every teacher channel in order
    return torch.cat(parts)


@torch.no_grad()
def widen_copy(student: nn.Module, teacher: nn.Module, out_map: torch.Tensor, in_map: torch.Tensor) -> None:
    """Copy ``teacher`` into ``student`` (same layers, wider or equal channels), preserving its function.

    Output channel ``o`` of the student is the teacher's ``out_map[o]``; an input channel repeated ``n``
    times in ``in_map`` has its weights divided by ``n``, so the sum over the repeats is the teacher's.
    """
    counts = torch.bincount(in_map).to(torch.float32)
    for s, t in zip(student.modules(), teacher.modules(), strict=False):
        if isinstance(s, nn.Conv2d):
            w = t.weight[out_map]
            if s.groups == 1:
                w = w[:, in_map] / counts[in_map][None, :, None, None]
            s.weight.copy_(w)
            if s.bias is not None:
                s.bias.copy_(t.bias[out_map])
        elif isinstance(s, nn.BatchNorm2d):
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(s, key).copy_(getattr(t, key)[out_map])
            s.num_batches_tracked.copy_(t.num_batches_tracked)


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


class _Captures:
    """Forward hooks that keep each named block's ``(input, output)`` of the last forward pass.

    With ``detach``, a block reads a detached copy of its input (a pre-hook), so the gradient of its
    loss stops at the block: the regression stays local even when it runs inside the student's forward.
    """

    def __init__(self, blocks: list[tuple[str, nn.Module]], detach: bool = False) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = []
        for name, block in blocks:
            if detach:
                self.handles.append(block.register_forward_pre_hook(lambda _m, args: (args[0].detach(),)))
            self.handles.append(
                block.register_forward_hook(
                    lambda _m, args, out, name=name: self.seen.__setitem__(name, (args[0], out))
                )
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def init_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    spec: Any,
    progress: bool = False,
    seed: int = 0,
    maps: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Copy the shared layers of ``teacher`` into ``student`` and fit its swapped blocks; return the stats.

    ``spec`` is the swap's :class:`~edgekit.compress.recipe.TeacherInitSpec` (``epochs`` over ``data``,
    ``lr``, ``batch_size``, ``student_fed``: the last part of the steps in which the blocks read the
    student's features). Each fitted block's loss is its squared error divided by the variance of the
    teacher's output, so 0 is a perfect copy and 1 is no better than a constant (a residual block can start
    above 1: its input is added to what it learns); the mean per block over the first and the last epoch
    are returned as ``fit_loss_first_epoch`` and ``fit_loss``. ``maps`` are the :func:`channel_maps` to
    copy through (drawn from ``seed`` when not given).
    """
    copy_pairs, fit_pairs = block_pairs(student, teacher)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    maps = maps if maps is not None else channel_maps(student, teacher, rng)
    inputs = dict(_FLOW)
    for name, s, t in copy_pairs:
        widen_copy(s, t, maps[name], _input_map(maps, inputs[name]))
    copied = [name for name, _, _ in copy_pairs]
    widened = any(len(m) != int(m.max()) + 1 for m in maps.values())
    if not fit_pairs:  # nothing was swapped: the copy is the whole init
        return {"copied": copied, "fitted": [], "steps": 0, "fit_loss_first_epoch": {}, "fit_loss": {}}
    in_maps = {name: _input_map(maps, inputs[name]) for name, _, _ in fit_pairs}
    teacher = teacher.eval()
    from_teacher = _Captures([(name, t) for name, _, t in fit_pairs])
    from_student = _Captures([(name, s) for name, s, _ in fit_pairs], detach=True)
    x, _, _ = data.batch(np.arange(min(len(data), spec.batch_size)))
    with torch.no_grad():
        teacher.raw(x)
        for name, s, _ in fit_pairs:
            inp, out = from_teacher.seen[name]
            match_moments(s, inp[:, in_maps[name]], out[:, maps[name]], gain=START_GAIN)
    steps_per_epoch = max(1, len(data) // spec.batch_size)
    total = max(1, int(round(spec.epochs * steps_per_epoch)))
    student_fed_from = total - int(round(getattr(spec, "student_fed", 0.0) * total))
    opt = torch.optim.Adam([p for _, s, _ in fit_pairs for p in s.parameters()], lr=spec.lr)
    per_block = {name: [] for name, _, _ in fit_pairs}
    first = {name: [] for name, _, _ in fit_pairs}
    student.eval()  # the copied layers keep the teacher's BN statistics; the fitted blocks learn theirs
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
                fed = step >= student_fed_from
                with torch.no_grad():
                    teacher.raw(x)
                if fed:
                    student.raw(x)
                loss = x.new_zeros(())
                for name, s, _ in fit_pairs:
                    inp, target = from_teacher.seen[name]
                    target = target[:, maps[name]].detach()
                    if fed:
                        pred = from_student.seen[name][1]
                    else:
                        pred = s(inp[:, in_maps[name]].detach())
                    err = _normalised_error(pred, target)
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
        from_teacher.remove()
        from_student.remove()
    student.eval()
    return {
        "copied": copied,
        "widened": widened,
        "fitted": [name for name, _, _ in fit_pairs],
        "steps": total,
        "student_fed_steps": total - student_fed_from,
        "fit_loss_first_epoch": {name: round(float(np.mean(v)), 4) for name, v in first.items() if v},
        "fit_loss": {name: round(float(np.mean(v)), 4) for name, v in per_block.items() if v},
    }


def hint_loss(
    student: nn.Module,
    teacher: nn.Module,
    maps: dict[str, torch.Tensor],
    distill: float,
    hint: float,
) -> tuple[Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor], Callable[[], None]]:
    """A ``TrainHooks.extra_loss`` for end-to-end training: distillation plus hints on the swapped blocks.

    ``distill`` x the objectness-scaled distillation of the outputs, plus ``hint`` x the mean over the
    swapped blocks of their normalised squared error against the teacher block's output (through
    ``maps``), with the gradient crossing the network this time (FitNets' hints kept during training).
    One teacher forward serves both terms. Returns ``(extra_loss, remove)``; call ``remove`` after training
    to take the hooks off the student.
    """
    teacher = copy.deepcopy(teacher)
    _, fit_pairs = block_pairs(student, teacher)
    from_teacher = _Captures([(name, t) for name, _, t in fit_pairs])
    from_student = _Captures([(name, s) for name, s, _ in fit_pairs])
    outputs = distill_hook(teacher, distill)  # its teacher forward fills ``from_teacher``

    def extra_loss(images: torch.Tensor, raw: list[torch.Tensor]) -> torch.Tensor:
        loss = outputs(images, raw)
        if hint > 0 and fit_pairs:
            errs = [
                _normalised_error(from_student.seen[name][1], from_teacher.seen[name][1][:, maps[name]])
                for name, _, _ in fit_pairs
            ]
            loss = loss + hint * torch.stack(errs).mean()
        return loss

    def remove() -> None:
        from_teacher.remove()
        from_student.remove()

    return extra_loss, remove
