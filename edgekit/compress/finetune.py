"""Short training runs used by every step, plus the ``finetune`` and ``distill`` steps themselves."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.compress.distill import distill_hook, raw_map_objective
from edgekit.compress.step import Step, StepResult
from edgekit.models.train import TrainConfig, TrainHooks, train


def teacher_of(ctx: Any) -> nn.Module:
    """The distillation teacher: the context's, else the model the recipe started from."""
    if ctx.teacher is None:
        raise ValueError("CompressContext.teacher is not set (the runner sets it to the input model)")
    return ctx.teacher


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Any, images: int = 256, batch_size: int = 32) -> None:
    """Re-estimate every BatchNorm's running statistics on ``images`` training images.

    After pruning, the layers behind a cut see fewer input channels, so their BN running statistics are
    stale; a few forward passes fix most of the accuracy drop before any fine-tuning.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for start in range(0, min(images, len(data)), batch_size):
        x, _, _ = data.batch(np.arange(start, min(start + batch_size, images, len(data))))
        model.raw(x) if hasattr(model, "raw") else model(x)
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.eval()


def finetune(
    model: nn.Module, spec: Any, ctx: Any, description: str = "fine-tune", hooks: TrainHooks | None = None
) -> dict:
    """Train ``model`` in place for ``spec.epochs`` (scaled) with optional distillation; return train stats.

    ``spec`` is a :class:`~edgekit.compress.recipe.FinetuneSpec`; an epoch count that scales to 0 skips.
    A run interrupted after an epoch resumes from ``ctx.workdir`` (see :func:`edgekit.models.train.train`).
    """
    if spec is None or ctx.epochs(spec.epochs) <= 0:
        return {"steps": 0}
    epochs = ctx.epochs(spec.epochs)
    hooks = hooks or TrainHooks()
    weight = getattr(spec, "distill", 0.0)
    objective, lr = None, spec.lr
    if is_foreign(model):  # no loss of its own: distillation from the unpruned model (+ its labels' loss)
        teacher = teacher_of(ctx)
        if _same_weights(model, teacher) and not getattr(ctx, "detection", 0.0):
            # the loss is 0 and its gradient rounding noise, which Adam would scale up to full-size steps
            return {"steps": 0, "skipped": "the model equals its teacher: nothing to distil"}
        objective = raw_map_objective(
            model, copy.deepcopy(teacher), max(weight, 1.0), detection=getattr(ctx, "detection", 0.0),
            input_hw=tuple(ctx.input_shape[2:]),
        )  # fmt: skip
        lr = spec.lr * foreign_rate(ctx)
    elif weight > 0:
        teacher = copy.deepcopy(teacher_of(ctx))
        hooks = TrainHooks(extra_loss=distill_hook(teacher, weight), after_step=hooks.after_step)
    cfg = TrainConfig(epochs=epochs, batch_size=getattr(spec, "batch_size", 32), lr=lr, seed=ctx.seed)
    stats = train(
        model, ctx.train, cfg, hooks, progress=ctx.progress, description=description, resume_dir=ctx.workdir,
        objective=objective,
    )  # fmt: skip
    if is_foreign(model) and getattr(ctx, "detection", 0.0):
        stats["detection"] = ctx.detection
    return {**stats, "lr": lr} if lr != spec.lr else stats


#: A user's model trains at the recipe's rate x this. Its BatchNorm is folded into the conv weights, so
#: Adam's step (about ``lr`` per weight, whatever the weight's size) is large against them. Measured on the
#: real YOLOX (ddddocr) pruned 20 %, 5 epochs of distillation on 128 text images, teacher agreement
#: mAP@0.5 on 32 held-back: 0.06 pruned; lr 1e-4 0.48, 3e-4 0.62, 1e-3 0.56; 3e-3 (the recipe's) 0.17
#: after 20 epochs.
FOREIGN_LR_SCALE = 0.1


#: A user's model with labels (``--data``): the weight of the detection loss on its decoded output beside
#: distillation (:mod:`edgekit.compress.decoded_loss`). Measured on the test reference handed over as an
#: ONNX file (yolov5 head; 0.783 / 0.502 mAP@0.5 / 0.5:0.95), L1 20 %, 10 epochs on its 1,200 labelled
#: images: distillation alone 0.771 / 0.490; with the detection loss at weight 0.3 0.775 / 0.489, at 1
#: 0.789 / 0.488, at 3 0.786 / 0.485 (all at 0.1 of the recipe's rate). At 1 it gains 1.7 points of
#: mAP@0.5 for 0.1 of mAP@0.5:0.95; on the two bench architectures it gains 0.6-2.5 points of both
#: (bench/foreign_arch.py).
FOREIGN_DETECTION_WEIGHT = 1.0


#: A user's model with labels trains at the recipe's rate x this instead: the detection loss holds it to the
#: task. Measured with the default recipe (20 epochs, distillation + detection loss) on the two bench
#: architectures (bench/foreign_arch.py), Δ mAP@0.5:0.95 of the torch model at rate 0.1 / 1.0: V8Det -3.62 /
#: -0.39, V5Det -6.67 / -0.80 (0.3 fell between them at 10 epochs).
LABELLED_LR_SCALE = 1.0


def foreign_rate(ctx: Any) -> float:
    """A user's model's rate against the recipe's.

    With labels :data:`LABELLED_LR_SCALE`, else the distillation-only :data:`FOREIGN_LR_SCALE`.
    """
    return LABELLED_LR_SCALE if getattr(ctx, "detection", 0.0) else FOREIGN_LR_SCALE


def labelled_detection_weight(model: nn.Module, labelled: bool) -> float:
    """The detection-loss weight of a run: :data:`FOREIGN_DETECTION_WEIGHT` for a user's model with labels.

    The built-in detector trains on its own loss already; a run without labels has only distillation.
    """
    return FOREIGN_DETECTION_WEIGHT if labelled and is_foreign(model) else 0.0


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


def is_foreign(model: nn.Module) -> bool:
    """A user's detector (imported from ONNX): trained by distillation, its head kept whole."""
    return hasattr(model, "forward_with_maps")


class FinetuneStep(Step):
    """Fine-tune the current model (optionally with distillation)."""

    type = "finetune"
    description = "fine-tune"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"fine-tune {spec.epochs:g} ep"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        stats = finetune(model, spec, ctx, self.description)
        return StepResult(model, extra={"train": stats})


class DistillStep(FinetuneStep):
    """Fine-tune with objectness-scaled distillation from the recipe's input model."""

    type = "distill"
    description = "distillation"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"distill x{spec.distill:g}, {spec.epochs:g} ep"
