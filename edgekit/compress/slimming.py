"""Network slimming (Liu et al., 2017) with a sparsity update that really separates BN gammas on short runs.

Plain L1 on gamma added to the gradient does almost nothing under AdamW (its per-parameter normalisation
cancels a constant push), and a proximal shrink alone shrinks a whole layer uniformly: with LeakyReLU and a
BN after the next conv, scaling a layer's gamma and beta together leaves the network function unchanged, so
the loss never resists the shrink. Here each optimiser step is followed by

    gamma <- sign(gamma) * max(|gamma| - lr * lam * m, 0);  (gamma, beta) <- (gamma, beta) * m / mean|gamma|

where ``m`` is the layer's mean |gamma| at the start. The shrink is the proximal step of the L1 penalty; the
rescale removes the free "shrink everything" direction, so what remains pushes channels below the layer mean
towards zero and the others up, unless the detection loss defends them. Channels are then removed by
|gamma| relative to their layer's mean (global or per-layer threshold), and the model is fine-tuned.

A channel whose gamma is zero is not gone: it outputs the constant act(beta), and through the zero padding
of the next 3x3 conv that constant marks the image border, which a detector uses (on the converged
reference, removing the 32 % of channels the gamma shrink had zeroed took val mAP@0.5 from 0.73 to 0.23,
BN statistics re-estimated). ``shrink: channel`` therefore shrinks the pair (gamma, beta) as one group,

    (gamma, beta) <- (gamma, beta) * max(1 - lr * lam * m / ||(gamma, beta)||, 0),

the proximal step of the group L1 penalty, so a channel dies whole while the loss still sees it go, and
ranks channels by ||(gamma, beta)||: removing the dead ones then changes nothing (0.851 before, 0.852 after).

A user's model (imported from ONNX) has its BN folded into its convs, so there is no gamma to shrink. Each
prunable conv gets a :class:`ChannelScale` behind it (a per-channel gamma = 1, beta = 0: the function is
unchanged), slimming runs on those, and they are folded back into the convs at the end, so the exported
graph has the user's ops and no more.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgekit.compress.context import evaluate_map
from edgekit.compress.finetune import finetune, foreign_rate, is_foreign, recalibrate_bn
from edgekit.compress.graph import (
    CRITERIA,
    build_graph,
    channel_strength,
    keep_count,
    prunable_convs,
    prune_plan,
)
from edgekit.compress.step import Step, StepResult
from edgekit.models.train import TrainHooks


class ChannelScale(nn.BatchNorm2d):
    """A BN without statistics (``x * gamma + beta`` in training and eval): the gate slimming trains.

    A BatchNorm2d subclass so torch-pruning removes its channels with the conv's; its running statistics
    stay 0 / 1 and are never used.
    """

    def __init__(self, channels: int, lr_scale: float = 1.0) -> None:
        super().__init__(channels, eps=0.0)
        self.lr_scale = lr_scale  # its parameters' rate x this (read by edgekit.models.train.train)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the per-channel affine."""
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def insert_scales(model: nn.Module, input_shape: tuple[int, ...], rate: float = 1.0) -> int:
    """Put a :class:`ChannelScale` behind each prunable conv of a user's model, in place; return how many.

    The gates are at the scale of a BN's gamma (1), not of the folded weights, so they train at the recipe's
    rate while the rest of a user's model trains at ``rate`` x it
    (:func:`~edgekit.compress.finetune.foreign_rate`).
    """
    prunable = {id(c) for c in prunable_convs(model, input_shape).values()}
    convs = model.net.convs
    keys = [k for k, conv in convs.items() if id(conv) in prunable]
    for key in keys:
        gate = ChannelScale(convs[key].out_channels, lr_scale=1.0 / rate)
        convs[key] = nn.Sequential(convs[key], gate)
    return len(keys)


@torch.no_grad()
def fold_scales(model: nn.Module) -> int:
    """Fold each inserted :class:`ChannelScale` into its conv, in place (exact); return how many."""
    convs, folded = model.net.convs, 0
    for key, module in list(convs.items()):
        if isinstance(module, nn.Sequential) and isinstance(module[-1], ChannelScale):
            conv, scale = module[0], module[-1]
            conv.weight.mul_(scale.weight.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale.bias)
            conv.bias = nn.Parameter(bias * scale.weight + scale.bias)
            convs[key] = conv
            folded += 1
    return folded


MIN_ALIVE = 8  # channels per layer the shrink always leaves non-zero
SPARSE_BELOW = 0.1  # a channel counts as "sparse" when |gamma| < 0.1 x its layer's mean |gamma|


def gated_bns(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, nn.BatchNorm2d]:
    """Conv name -> the BN right after it, for every prunable conv that has one."""
    graph = build_graph(model, input_shape)
    out = {}
    for name, conv in prunable_convs(model, input_shape).items():
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
        bn = next((d.target.module for d, _ in group if isinstance(d.target.module, nn.BatchNorm2d)), None)
        if bn is not None:
            out[name] = bn
    return out


def removal_criterion(shrink: str = "gamma"):
    """The pruning criterion that ranks channels by what ``shrink`` drove to zero."""
    return CRITERIA["bn" if shrink == "gamma" else "bn_channel"]()


def relative_strength(bns: dict[str, nn.BatchNorm2d], shrink: str = "gamma") -> dict[str, torch.Tensor]:
    """Channel strength / its layer's mean (scale-free, comparable across layers)."""
    out = {}
    for name, bn in bns.items():
        strength = channel_strength(bn, shrink)
        out[name] = strength / strength.mean().clamp_min(1e-12)
    return out


def sparse_fraction(bns: dict[str, nn.BatchNorm2d], shrink: str = "gamma") -> float:
    """Fraction of channels whose relative strength is below :data:`SPARSE_BELOW`."""
    rel = torch.cat(list(relative_strength(bns, shrink).values()))
    return float((rel < SPARSE_BELOW).float().mean())


def dead_fraction(bns: dict[str, nn.BatchNorm2d], shrink: str = "gamma") -> float:
    """Fraction of channels the shrink has set exactly to zero."""
    return float(torch.cat([channel_strength(bn, shrink) == 0 for bn in bns.values()]).float().mean())


def proximal_shrink(bns: dict[str, nn.BatchNorm2d], lam: float, renormalize: bool, shrink: str = "gamma"):
    """An ``after_step(model, lr)`` hook applying the shrink-and-rescale update of the module docstring."""
    ref = {n: float(bn.weight.detach().abs().mean()) for n, bn in bns.items()}

    @torch.no_grad()
    def after_step(_model: nn.Module, lr: float) -> None:
        for name, bn in bns.items():
            g, b = bn.weight, bn.bias
            step = lr * lam * ref[name]
            if shrink == "channel":
                factor = (1 - step / torch.hypot(g, b).clamp_min(1e-12)).clamp_min(0)
                if int((factor > 0).sum()) < MIN_ALIVE:
                    continue  # never let a whole layer die: the network would be cut in two
                g.mul_(factor)
                b.mul_(factor)
            else:
                shrunk = g.sign() * (g.abs() - step).clamp_min(0)
                if int((shrunk != 0).sum()) < MIN_ALIVE:
                    continue
                g.copy_(shrunk)
            if renormalize:
                scale = ref[name] / float(g.abs().mean().clamp_min(1e-12))
                g.mul_(scale)
                b.mul_(scale)

    return after_step


def slim_plan(bns: dict[str, nn.BatchNorm2d], spec: Any) -> dict[str, int]:
    """Channels to remove per conv from the relative strengths (global quantile or per-layer ratio)."""
    rel = relative_strength(bns, spec.sparsity.shrink)
    if spec.threshold == "global":
        cut = float(torch.quantile(torch.cat(list(rel.values())), spec.ratio))
        wanted = {n: int((r <= cut).sum()) for n, r in rel.items()}
    else:
        wanted = {n: int(round(spec.ratio * len(r))) for n, r in rel.items()}
    plan = {}
    for name, count in wanted.items():
        channels = len(rel[name])
        ratio = min(count / channels, spec.max_layer_ratio)
        plan[name] = channels - keep_count(channels, ratio, spec.round_to)
    return plan


class SlimStep(Step):
    """Sparsity training, BN-gamma threshold, channel removal, fine-tune (network slimming)."""

    type = "slim"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"slimming {spec.ratio:.0%} ({spec.threshold})"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        sp, inserted, lam = spec.sparsity, 0, spec.sparsity.lam
        if is_foreign(model):  # no BN of its own: gates behind its convs, folded back at the end
            inserted = insert_scales(model, ctx.input_shape, foreign_rate(ctx))
            lam = lam / foreign_rate(
                ctx
            )  # it trains at a scaled rate; the shrink per step stays the recipe's
        bns = gated_bns(model, ctx.input_shape)
        before = torch.cat([bn.weight.detach().abs() for bn in bns.values()])
        frac_before = sparse_fraction(bns, sp.shrink)
        hooks = TrainHooks(after_step=proximal_shrink(bns, lam, sp.renormalize, sp.shrink))
        stats = finetune(model, sp, ctx, "sparsity training", hooks) if sp.epochs > 0 else {"steps": 0}
        after = torch.cat([bn.weight.detach().abs() for bn in bns.values()])
        frac_after, dead = sparse_fraction(bns, sp.shrink), dead_fraction(bns, sp.shrink)
        after_sparsity = evaluate_map(model, ctx.val)
        history = prune_plan(model, slim_plan(bns, spec), removal_criterion(sp.shrink), ctx.input_shape)
        recalibrate_bn(model, ctx.train)
        after_prune = evaluate_map(model, ctx.val)
        tuned = finetune(model, spec.finetune, ctx, "fine-tune after slimming")
        if inserted:
            fold_scales(model)
        extra = {
            "gamma_before": [round(float(v), 5) for v in before],
            "gamma_after": [round(float(v), 5) for v in after],
            "sparsity": {
                "below": SPARSE_BELOW,
                "fraction_before": round(frac_before, 4),
                "fraction_after": round(frac_after, 4),
                "dead_after": round(dead, 4),  # exactly zero: removing them changes nothing (channel shrink)
                "shrink": sp.shrink,
            },
            "train": {"sparsity": stats, "finetune": tuned},
            # where the accuracy goes: the sparsity training, the cut, and what the fine-tune starts from
            "stages": {"after_sparsity": after_sparsity, "after_prune": after_prune},
        }
        if inserted:
            extra["inserted_scales"] = inserted  # gates behind a user's convs, folded after the fine-tune
        return StepResult(model, history=history, extra=extra)
