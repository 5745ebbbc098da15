"""The compression Step contract and the registry of step kinds.

A step is a small class: ``type`` (the recipe's ``type:``), ``Spec`` (its pydantic block in
:mod:`edgekit.compress.recipe`) and ``apply(model, spec, ctx) -> StepResult``. The runner measures the model
before and after, writes the record node and the checkpoint; a step only transforms the model and reports
what it did (``history``, ``extra``).

QAT contract (for the pipeline): the ``qat`` step returns the fake-quant torch model; its
``StepResult.export`` is ``export_qdq(model, input_shape, path) -> Path``, which writes a QDQ ONNX
(QuantizeLinear/DequantizeLinear around every quantized conv) that ONNX Runtime runs as INT8. When
``recipe.quantize_step().type == "qat"`` the pipeline calls :func:`edgekit.compress.qat.export_qdq` on the
model ``run_recipe`` returned instead of exporting FP32 and running PTQ.

Ordering rules live in :func:`edgekit.compress.recipe.check_order` (quantization last, at most once;
swap before any pruning), so they are checked when the recipe is loaded, before anything runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from edgekit.core.errors import ConfigError


@dataclass
class StepResult:
    """What a step hands back.

    Attributes:
        model: The compressed model (a new module or the input changed in place).
        history: Replayable record of what was removed: ``[{"layer", "indices", "channels_before"}]``.
        extra: Free-form figures for the record (``gamma_before``, ``layers``, ``sparsity`` ...).
        export: For QAT only: ``export_qdq(model, input_shape, path)``, see the module docstring.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    export: Callable[..., Any] | None = None


class Step:
    """Base of every compression step; subclasses set ``type`` and implement :meth:`apply`."""

    type: ClassVar[str] = ""

    def label(self, spec: Any) -> str:
        """Short human label for the record (e.g. ``l1 30 %``)."""
        return self.type

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Compress ``model`` according to ``spec``; see the module docstring for the contract."""
        raise NotImplementedError


# type -> "module:Class", imported on first use so `import edgekit.compress` stays light.
STEPS: dict[str, str] = {
    "prune": "edgekit.compress.prune:PruneStep",
    "slim": "edgekit.compress.slimming:SlimStep",
    "progressive": "edgekit.compress.progressive:ProgressiveStep",
    "swap": "edgekit.compress.swap:SwapStep",
    "finetune": "edgekit.compress.finetune:FinetuneStep",
    "distill": "edgekit.compress.finetune:DistillStep",
    "qat": "edgekit.compress.qat:QatStep",
}


def get_step(step_type: str) -> Step:
    """Instantiate the step class registered for ``step_type``.

    Raises:
        ConfigError: No torch-side step has that type (``ptq`` runs in the pipeline, on the ONNX).
    """
    if step_type not in STEPS:
        raise ConfigError(
            f"no compression step of type {step_type!r}",
            f"known: {', '.join(sorted(STEPS))} (ptq is run by the pipeline on the ONNX)",
        )
    module, cls = STEPS[step_type].split(":")
    return getattr(importlib.import_module(module), cls)()
