"""Short training runs used by every step, plus the ``finetune`` and ``distill`` steps themselves."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from edgekit.compress.distill import distill_hook
from edgekit.compress.step import Step, StepResult
from edgekit.models.train import TrainConfig, TrainHooks, train


def teacher_of(ctx: Any) -> nn.Module:
    """The distillation teacher: the context's, else the model the recipe started from."""
    if ctx.teacher is None:
        raise ValueError("CompressContext.teacher is not set (the runner sets it to the input model)")
    return ctx.teacher


def finetune(
    model: nn.Module, spec: Any, ctx: Any, description: str = "fine-tune", hooks: TrainHooks | None = None
) -> dict:
    """Train ``model`` in place for ``spec.epochs`` (scaled) with optional distillation; return train stats.

    ``spec`` is a :class:`~edgekit.compress.recipe.FinetuneSpec`; an epoch count that scales to 0 skips.
    """
    if spec is None or ctx.epochs(spec.epochs) <= 0:
        return {"steps": 0}
    epochs = ctx.epochs(spec.epochs)
    hooks = hooks or TrainHooks()
    if spec.distill > 0:
        hooks = TrainHooks(
            extra_loss=distill_hook(copy.deepcopy(teacher_of(ctx)), spec.distill), after_step=hooks.after_step
        )
    cfg = TrainConfig(epochs=epochs, batch_size=spec.batch_size, lr=spec.lr, seed=ctx.seed)
    return train(model, ctx.train, cfg, hooks, progress=ctx.progress, description=description)


class FinetuneStep(Step):
    """Fine-tune the current model (optionally with distillation)."""

    type = "finetune"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"fine-tune {spec.epochs:g} ep"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        stats = finetune(model, spec, ctx, "fine-tune")
        return StepResult(model, extra={"train": stats})


class DistillStep(Step):
    """Fine-tune with objectness-scaled distillation from the recipe's input model."""

    type = "distill"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"distill x{spec.distill:g}, {spec.epochs:g} ep"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        stats = finetune(model, spec, ctx, "distillation")
        return StepResult(model, extra={"train": stats})
