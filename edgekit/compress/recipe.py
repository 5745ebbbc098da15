"""Compression recipes: a named list of steps read from ``recipes/<name>.yaml``, checked before anything runs.

Every block is a pydantic model with ``extra="forbid"``, so a typo is an error naming the file and the key
path (``steps.0.finetune.epoch``). Ordering rules (quantization last, swaps before pruning) are checked by
:func:`check_order` when the recipe is loaded, so a recipe that cannot run is refused before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from edgekit.core.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
QUANT_TYPES = ("ptq", "qat")
PRUNE_TYPES = ("prune", "slim", "progressive")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: fields added after runs were cached and benched, with the value at which the dump leaves them out,
    #: so the keys (compress cache, bench state) of recipes that do not set them stay put
    _ADDED_LATER: ClassVar[dict[str, Any]] = {}

    def _left_out(self) -> list[str]:
        return [name for name, value in self._ADDED_LATER.items() if getattr(self, name) == value]

    @model_serializer(mode="wrap")
    def _drop_defaults_added_later(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for name in self._left_out():
            data.pop(name, None)
        return data


class FinetuneSpec(_Spec):
    """A short training run (epochs are multiplied by the context's ``epochs_scale``)."""

    epochs: float = Field(1.0, ge=0)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    distill: float = Field(0.0, ge=0, description="weight of the objectness-scaled distillation loss")


class PruneSpec(_Spec):
    """L1 or FPGM filter pruning at a channel ratio or a MAC target."""

    type: Literal["prune"]
    method: Literal["l1", "fpgm"] = "l1"
    ratio: float | None = Field(None, gt=0, lt=1, description="fraction of each layer's channels to remove")
    macs_target: float | None = Field(None, gt=0, lt=1, description="fraction of the MACs to keep")
    round_to: int = Field(8, ge=1)
    finetune: FinetuneSpec | None = FinetuneSpec()

    @model_validator(mode="after")
    def _one_amount(self) -> PruneSpec:
        if (self.ratio is None) == (self.macs_target is None):
            raise ValueError("give exactly one of 'ratio' or 'macs_target'")
        return self


class SparsitySpec(_Spec):
    """Sparsity training of network slimming: a proximal L1 shrink of the BNs after each optimiser step."""

    epochs: float = Field(2.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    lam: float = Field(
        25.0, ge=0, description="L1 strength; the shrink per step is lr * lam * mean|gamma| of the layer"
    )
    renormalize: bool = Field(True, description="keep each layer's mean |gamma| (and beta) scale fixed")
    distill: float = Field(
        0.0, ge=0, description="weight of the distillation loss from the unslimmed model while shrinking"
    )
    shrink: Literal["gamma", "channel"] = Field(
        "gamma",
        description="gamma: L1 on BN gamma alone (a zeroed channel still outputs act(beta), a signal the "
        "network uses, so removing it costs accuracy); channel: group L1 on (gamma, beta), so a channel "
        "dies whole and removing it changes nothing",
    )

    _ADDED_LATER: ClassVar[dict[str, Any]] = {"distill": 0.0, "shrink": "gamma"}


class SlimSpec(_Spec):
    """Network slimming: sparsity training, BN-gamma threshold, channel removal, fine-tune."""

    type: Literal["slim"]
    sparsity: SparsitySpec = SparsitySpec()
    ratio: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="fraction of all prunable channels to remove; with the global threshold a floor: "
        "every channel the shrink zeroed goes",
    )
    threshold: Literal["global", "layer"] = "global"
    max_layer_ratio: float = Field(0.75, gt=0, lt=1)
    round_to: int = Field(8, ge=1)
    finetune: FinetuneSpec | None = FinetuneSpec()


class ProgressiveSpec(_Spec):
    """Micro-YOLO progressive pruning: 1/16 of a layer per trial until ``metric`` drops > ``max_drop``."""

    type: Literal["progressive"]
    max_drop: float = Field(0.5, ge=0, description="allowed drop of `metric` below the start, in points")
    metric: Literal["map50", "map50_95"] = Field(
        "map50", description="the stop rule's metric (Micro-YOLO's 0.5-point rule is on mAP@0.5)"
    )
    layers: list[str] | None = Field(None, description="conv names to try, in order (default: widest first)")
    max_layers: int | None = Field(4, ge=1)
    max_steps_per_layer: int = Field(4, ge=1, le=15)
    round_to: int = Field(1, ge=1)
    eval_images: int | None = Field(None, ge=1, description="evaluate on the first N validation images")
    finetune: FinetuneSpec | None = FinetuneSpec(epochs=0.25)


class TeacherInitSpec(_Spec):
    """How long the swapped blocks are fitted to the teacher's features before the swap trains end to end."""

    epochs: float = Field(2.0, ge=0)
    lr: float = Field(1e-2, gt=0, description="Adam, cosine; a local regression takes a higher rate")
    batch_size: int = Field(32, ge=1)
    student_fed: float = Field(
        0.5,
        ge=0,
        le=1,
        description="the last part of the fit in which each block reads the student's features, not the "
        "teacher's (it learns to undo the errors of the blocks before it)",
    )


class SwapSpec(_Spec):
    """Replace the architecture by Micro-YOLO (DSConv + MBConv-SE) and train it."""

    type: Literal["swap"]
    to: Literal["microyolo"] = "microyolo"
    expansion: float = Field(1.0, ge=1)
    se_reduction: int = Field(4, ge=1)
    width: float = Field(1.0, gt=0, description="channel multiplier on top of the input model's width")
    dsconv: Literal["first", "heaviest"] = Field(
        "first",
        description="where the DSConv goes: first - the largest-resolution 3x3 conv after the first, "
        "MBConv-SE elsewhere; heaviest - the four 3x3 convs holding most parameters, MBConv-SE in the stem",
    )
    init: Literal["random", "teacher"] = Field(
        "random",
        description="random: the new blocks start from random weights; teacher: copy the layers both "
        "models share (Net2WiderNet's function-preserving copy when width > 1) and fit each swapped block "
        "to the teacher block it replaces, on the teacher's features and then on the student's "
        "(edgekit.compress.teacher_init), so the swap starts from what the reference learnt",
    )
    init_fit: TeacherInitSpec = TeacherInitSpec()
    hint: float = Field(
        0.0,
        ge=0,
        description="weight of the hint loss while training: each swapped block's normalised squared error "
        "against the teacher block it replaces, added to the distillation (0: outputs only)",
    )
    train: FinetuneSpec = FinetuneSpec(epochs=20.0, lr=3e-3)

    _ADDED_LATER: ClassVar[dict[str, Any]] = {
        "width": 1.0,
        "hint": 0.0,
        "init": "random",
        "dsconv": "first",
    }

    def _left_out(self) -> list[str]:
        return super()._left_out() + (["init_fit"] if self.init == "random" else [])


class FinetuneStepSpec(FinetuneSpec):
    """A fine-tune as a step of its own."""

    type: Literal["finetune"]


class DistillSpec(FinetuneSpec):
    """Fine-tune with objectness-scaled distillation from the recipe's input model (the teacher)."""

    type: Literal["distill"]
    distill: float = Field(1.0, gt=0)


class QatSpec(FinetuneSpec):
    """Quantization-aware training (fake-quant INT8), exported as a QDQ ONNX instead of PTQ."""

    type: Literal["qat"]
    epochs: float = Field(0.5, ge=0)
    lr: float = Field(1e-4, gt=0)


class PtqSpec(_Spec):
    """INT8 post-training quantization, run by the pipeline on the exported ONNX (validated here only).

    ``method: default`` is the target backend's own default search (its ``methods`` in order); a named
    method must be one of the target backend's (checked when the plan is made).
    """

    type: Literal["ptq"]
    method: Literal["default", "auto", "minmax", "entropy", "percentile", "kl", "ema", "aciq"] = "default"
    keep_float: Literal["auto"] | list[str] = "auto"
    max_drop: float = Field(
        1.0,
        ge=0,
        description="mAP50-95 points INT8 may lose vs the FP32 model it quantizes (method auto)",
    )


StepSpec = Annotated[
    PruneSpec | SlimSpec | ProgressiveSpec | SwapSpec | FinetuneStepSpec | DistillSpec | QatSpec | PtqSpec,
    Field(discriminator="type"),
]


class Recipe(_Spec):
    """A named list of compression steps.

    Example:
        >>> r = Recipe(name="x", steps=[{"type": "prune", "ratio": 0.3}, {"type": "ptq"}])
        >>> [s.type for s in r.torch_steps()], r.quantize_step().method
        (['prune'], 'default')
    """

    name: str
    description: str = ""
    steps: list[StepSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> Recipe:
        check_order(self)
        return self

    def quantize_step(self) -> PtqSpec | QatSpec | None:
        """The ``ptq`` or ``qat`` step (always last), or None."""
        return self.steps[-1] if self.steps and self.steps[-1].type in QUANT_TYPES else None

    def torch_steps(self) -> list:
        """Steps that run on the torch model (everything but ``ptq``, which runs on the ONNX)."""
        return [s for s in self.steps if s.type != "ptq"]


class OrderError(ValueError):
    """Raised inside validation; turned into a ConfigError naming the recipe file."""


def check_order(recipe: Recipe) -> None:
    """Refuse step sequences that cannot work, naming the two steps involved.

    Raises:
        OrderError: Quantization not last (or twice), or a swap after a pruning step.
    """
    types = [s.type for s in recipe.steps]
    for i, t in enumerate(types):
        if t in QUANT_TYPES and i != len(types) - 1:
            later = types[i + 1]
            raise OrderError(
                f"step {i + 1} '{later}' cannot follow step {i} '{t}' ({later} after quantization): "
                "quantization must be the last step"
            )
        if t == "swap":
            earlier = next((j for j in range(i) if types[j] in PRUNE_TYPES), None)
            if earlier is not None:
                raise OrderError(
                    f"step {i} 'swap' cannot follow step {earlier} '{types[earlier]}': the architecture swap "
                    "replaces the pruned layers, so it must come before pruning"
                )


def _key_path(loc: tuple) -> str:
    # A discriminated union puts the step tag in the location (steps.0.prune.ratio); the user never wrote it.
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "steps" and parts[1].isdigit() and not parts[2].isdigit():
        if parts[2] in {"prune", "slim", "progressive", "swap", "finetune", "distill", "qat", "ptq"}:
            del parts[2]
    return ".".join(parts)


def parse_recipe(data: object, source: str) -> Recipe:
    """Validate a recipe mapping; errors are :class:`ConfigError` naming ``source`` and the key path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key_path(err["loc"]) or ("steps" if "cannot follow" in err["msg"] else "(top level)")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        hint = "fix the step order" if "cannot follow" in msg else "see recipes/default.yaml for the schema"
        raise ConfigError(f"{source}: {key}: {msg}", hint) from exc


def recipe_path(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (``default``) or a path to a ``.yaml`` file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return path
    return RECIPES_DIR / f"{name_or_path}.yaml"


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``recipes/``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by name or path.

    Raises:
        ConfigError: Missing file, bad YAML, an unknown key, a bad value or an impossible step order.

    Example:
        >>> load_recipe("default").quantize_step().type
        'ptq'
    """
    path = recipe_path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"recipe {name_or_path!r} not found ({path})",
            f"use one of: {', '.join(available_recipes())}, or a path to a .yaml file",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}", "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping with 'name' and 'steps'", "see recipes/default.yaml"
        )
    return parse_recipe(data, str(path))
