"""The architecture swap step: replace the detector by Micro-YOLO and train it (optionally distilled)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.compress.context import evaluate_map
from edgekit.compress.finetune import finetune
from edgekit.compress.step import Step, StepResult
from edgekit.compress.teacher_init import channel_maps, hint_loss, init_from_teacher
from edgekit.core.errors import CompressionError
from edgekit.models.microyolo import MicroYolo, MicroYoloConfig
from edgekit.models.train import TrainHooks


def microyolo_like(
    model: nn.Module, expansion: float, se_reduction: int, width: float = 1.0, dsconv: str = "first"
) -> MicroYolo:
    """A Micro-YOLO with the same classes, input size and priors as ``model``, ``width`` times its width."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "num_classes"):
        raise CompressionError(
            "the swap step needs an edgekit detector (a model with .cfg.num_classes)",
            "start from the built-in reference detector or a model saved by edgekit",
        )
    return MicroYolo(
        MicroYoloConfig(
            num_classes=cfg.num_classes,
            input_size=cfg.input_size,
            width=cfg.width * width,
            priors=tuple(cfg.priors),
            expansion=expansion,
            se_reduction=se_reduction,
            dsconv=dsconv,
        )
    )


class SwapStep(Step):
    """Swap to Micro-YOLO (DSConv + MBConv-SE) and train it; the input model is the distillation teacher."""

    type = "swap"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        width = f", width x{spec.width:g}" if spec.width != 1.0 else ""
        width += ", DSConv at the heaviest layers" if spec.dsconv == "heaviest" else ""
        init = ", from the teacher" if spec.init == "teacher" else ""
        init += f", hints x{spec.hint:g}" if spec.hint else ""
        return f"swap to {spec.to} (alpha {spec.expansion:g}, beta {spec.se_reduction}{width}{init})"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        torch.manual_seed(ctx.seed)
        student = microyolo_like(model, spec.expansion, spec.se_reduction, spec.width, spec.dsconv)
        extra: dict[str, Any] = {}
        maps = (
            channel_maps(student, model, np.random.default_rng(ctx.seed))
            if spec.init == "teacher" or spec.hint
            else None
        )
        if spec.init == "teacher":
            fit = spec.init_fit.model_copy(update={"epochs": ctx.epochs(spec.init_fit.epochs)})
            extra["init"] = init_from_teacher(student, model, ctx.train, fit, ctx.progress, ctx.seed, maps)
            extra["init"]["after_init"] = evaluate_map(student, ctx.val)
        if spec.hint > 0:
            loss, remove = hint_loss(student, model, maps, spec.train.distill, spec.hint)
            try:
                train_spec = spec.train.model_copy(update={"distill": 0.0})
                stats = finetune(student, train_spec, ctx, "training Micro-YOLO", TrainHooks(extra_loss=loss))
            finally:
                remove()
        else:
            stats = finetune(student, spec.train, ctx, "training Micro-YOLO")
        return StepResult(
            student.eval(), extra={**extra, "train": stats, "architecture": student.cfg.to_dict()}
        )
