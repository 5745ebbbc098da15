"""L1 and FPGM filter pruning at a channel ratio or a MAC target, then a short fine-tune."""

from __future__ import annotations

from typing import Any

from torch import nn

from edgekit.compress.finetune import finetune, recalibrate_bn
from edgekit.compress.graph import CRITERIA, plan_for_macs, prune_plan, uniform_plan
from edgekit.compress.step import Step, StepResult


class PruneStep(Step):
    """Structured filter pruning on the dependency graph.

    ``ratio`` removes that fraction of every prunable conv's channels; ``macs_target`` finds the uniform
    ratio that keeps that fraction of the MACs. Channel counts are rounded to ``round_to`` (8 by default),
    the prediction convs are never pruned. L1 ranks a channel by the mean absolute weight of its whole
    coupled group; FPGM by its distance to the geometric median of the layer's filters (redundant filters
    go first).
    """

    type = "prune"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        amount = f"{spec.ratio:.0%} channels" if spec.ratio else f"to {spec.macs_target:.0%} MACs"
        return f"{spec.method} {amount}"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        if spec.ratio is not None:
            plan = uniform_plan(model, spec.ratio, spec.round_to, ctx.input_shape)
        else:
            plan = plan_for_macs(model, spec.macs_target, spec.round_to, ctx.input_shape)
        history = prune_plan(model, plan, CRITERIA[spec.method](), ctx.input_shape)
        recalibrate_bn(model, ctx.train)
        stats = finetune(model, spec.finetune, ctx, f"fine-tune after {spec.method} pruning")
        return StepResult(model, history=history, extra={"train": stats})
