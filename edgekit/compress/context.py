"""What every compression step gets besides the model: data, preprocessing, teacher, work folder, budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgekit.data.preprocess import PreprocessSpec
from edgekit.export.onnx import model_macs_params
from edgekit.models.train import InMemorySplit, evaluate


@dataclass
class CompressContext:
    """Shared inputs of a recipe run.

    Attributes:
        train: Training split (fine-tunes, sparsity training, QAT).
        val: Validation split (every mAP in the record).
        spec: The one preprocessing of the model.
        workdir: Per-step checkpoints and JSON go here (resume).
        teacher: Distillation teacher; None means "the model the recipe started from".
        epochs_scale: Multiplies every epoch count of the recipe (tests use tiny values).
        progress: Show progress bars.
        seed: Seed of every training run.
        detection: A user's model with labels: the weight of the detection loss on its decoded output
            (:mod:`edgekit.compress.decoded_loss`) beside distillation; 0 for distillation alone.
    """

    train: InMemorySplit
    val: InMemorySplit
    spec: PreprocessSpec
    workdir: Path
    teacher: nn.Module | None = None
    epochs_scale: float = 1.0
    progress: bool = True
    seed: int = 0
    detection: float = 0.0
    log: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Batch-1 NCHW input shape of the model."""
        return (1, 3, self.spec.input_size, self.spec.input_size)

    def epochs(self, epochs: float) -> float:
        """A recipe's epoch count scaled by ``epochs_scale``."""
        return epochs * self.epochs_scale

    def note(self, message: str) -> None:
        """Keep a line of the run's log (the runner's resume decisions land here)."""
        self.log.append(message)


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict (parameters and buffers)."""
    return sum(
        t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor)
    )


def measure(model: nn.Module, ctx: CompressContext, data: InMemorySplit | None = None) -> dict[str, float]:
    """The record figures of a model: params, MACs, state-dict bytes, mAP@0.5 and mAP@0.5:0.95."""
    from edgekit.compress.qat import float_view  # fake-quant wrappers hide their convs from op counters

    cost = model_macs_params(float_view(model), ctx.input_shape)
    return {
        "params": cost["params"],
        "macs": cost["macs"],
        "size_bytes": state_dict_bytes(model),
        **evaluate_map(model, data or ctx.val),
    }


def evaluate_map(model: nn.Module, data: InMemorySplit) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 of ``model`` on ``data``, rounded to 5 digits for the record."""
    maps = evaluate(model, data)
    return {"map50": round(float(maps["map50"]), 5), "map50_95": round(float(maps["map50_95"]), 5)}
