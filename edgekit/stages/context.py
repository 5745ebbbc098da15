"""What every deploy stage shares: the run context, the stage results, the stage timer and the node writer.

A stage takes what it needs as arguments and returns a small result (:class:`DataResult`,
:class:`ModelState`, :class:`Exported`, :class:`Quantized`, :class:`Built`); the pipeline, the only
module that knows every stage, hands one stage's result to the next. The run context holds the run's
settings, its folder and its record, never a fact one stage leaves for another.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.config import Target
from edgekit.core.errors import EdgekitError
from edgekit.data.preprocess import PreprocessSpec
from edgekit.report.record import Node, RunRecord, now_iso

if TYPE_CHECKING:
    from edgekit.models.train import InMemorySplit


@dataclass
class RunContext:
    """Where one run goes and how: its target, folder, record and settings (no stage writes here).

    Attributes:
        target: The resolved target.
        run_dir: The run folder every stage writes into.
        record: The run record (saved after every stage).
        spec: The model's preprocessing (target YAML or the model's metadata).
        progress: Draw progress bars / lines.
        calib_root: Folder of the managed calibration sets.
        epochs_scale: Multiplies every training schedule.
    """

    target: Target
    run_dir: Path
    record: RunRecord
    spec: PreprocessSpec
    progress: bool = True
    calib_root: Path = Path("calibration")
    epochs_scale: float = 1.0

    def save(self) -> None:
        """Persist the record (atomic) after every stage."""
        self.record.save(self.run_dir / "record.json")


@dataclass(frozen=True)
class Sources:
    """What the user gave the run: the model, and the data or images it is measured and trained on.

    Attributes:
        model: ``builtin``, an ONNX file, or ``module:factory`` (with ``weights``).
        weights: State dict of a ``module:factory`` model.
        head: Output layout of a user ONNX (``None``: read from the graph).
        reference: The built-in model's training, ``converged`` or ``quick``.
        data: A labelled YOLO dataset folder (``None``: the built-in shapes set, or ``images``).
        images: A folder of unlabelled images for a user's model without ``data``.
    """

    model: str = "builtin"
    weights: str | None = None
    head: str | None = None
    reference: str = "converged"
    data: str | None = None
    images: str | None = None

    @property
    def metric(self) -> str:
        """``teacher_agreement`` for a user's model without labels, else ``map``."""
        return "teacher_agreement" if self.model != "builtin" and not self.data else "map"

    def route(self, compressed: bool) -> str:
        """How the model is taken (for ``--dry-run``); ``compressed``: the recipe has torch steps."""
        if self.model == "builtin":
            return "the built-in detector, trained on the dataset"
        how = "as it is (no torch steps)"
        if compressed:
            labels = " plus a detection loss on its decoded output (--data's labels)"
            how = (
                "imported as a torch module; pruning keeps its prediction convs whole; recovered by "
                "distillation from the unpruned model"
                + (labels if self.data else " (no labels)")
                + "; slimming gates its convs with inserted scales, folded back after; no layer swaps (its "
                "blocks are not edgekit's)"
            )
        metric = "mAP on --data" if self.data else "teacher agreement on held-back images (no labels)"
        return f"user model: {how}; metric: {metric}"


@dataclass(frozen=True)
class DataResult:
    """The data stage's result: the dataset folder, its val split in memory and its class names.

    ``metric`` is ``map`` (against the dataset's labels) or ``teacher_agreement`` (a user's model without
    labels: the val split's ground truth becomes the FP32 model's own detections, see
    :mod:`edgekit.data.unlabelled`). ``images`` is the unlabelled folder (``--images``), if one was given.
    """

    root: Path
    val: InMemorySplit
    class_names: tuple[str, ...]
    metric: str = "map"
    images: Path | None = None

    def train_split(self, spec: PreprocessSpec) -> InMemorySplit:
        """The images compression trains on: ``--images`` (all but the held-back ones) or the train split."""
        from edgekit.data.dataset import YoloDataset
        from edgekit.models.train import InMemorySplit

        if self.images is not None:
            from edgekit.data.unlabelled import folder_splits

            return InMemorySplit(folder_splits(self.images)[0], spec)
        return InMemorySplit(YoloDataset(self.root, "train"), spec)


@dataclass(frozen=True)
class ModelFacts:
    """What later stages need to know of the model they deploy.

    Attributes:
        class_names: The classes it predicts (the dataset's).
        head: Its output layout (``None`` = read from the ONNX output when built).
        stats: Params / MACs of the model as it is deployed (after compression).
    """

    class_names: tuple[str, ...] = ()
    head: str | None = None
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """The model between stages (a torch module or a user ONNX) and its facts."""

    model: Any
    facts: ModelFacts


@dataclass(frozen=True)
class Exported:
    """The export stage's result: the FP32 ONNX and, if the backend takes one, the torch program."""

    onnx: Path
    program: Path | None = None


@dataclass(frozen=True)
class Quantized:
    """The quantize stage's result: the INT8 QDQ ONNX and the quantizer options that made it."""

    onnx: Path
    quantizer: Any


@dataclass(frozen=True)
class Built:
    """The build stage's result: the artifact folder and the bytes the device holds."""

    dir: Path
    size_bytes: int


@contextmanager
def stage(ctx: RunContext, name: str):
    """Time a stage and, on failure, mark the record with where and why it stopped."""
    started, t0 = now_iso(), time.perf_counter()
    fields: dict[str, Any] = {"started": started}
    try:
        yield fields
    except EdgekitError as exc:
        ctx.record.status, ctx.record.failed_stage = "failed", name
        ctx.record.error = {"message": exc.message, "hint": exc.hint}
        ctx.save()
        raise
    except KeyboardInterrupt:
        ctx.record.status, ctx.record.failed_stage = "interrupted", name
        ctx.record.error = {
            "message": f"interrupted (Ctrl-C) in stage {name}",
            "hint": "finished stages are kept",
        }
        ctx.save()
        raise
    fields["ended"], fields["seconds"] = now_iso(), round(time.perf_counter() - t0, 3)


def add_node(ctx: RunContext, stage_name: str, config: dict, fields: dict, **kw: Any) -> Node:
    """Add a node for a finished stage and save the record."""
    node = ctx.record.child(stage_name, config, **fields, **kw)
    ctx.save()
    return node


def model_stats(model: Any, spec: PreprocessSpec) -> dict[str, int]:
    """Params, MACs and state-dict bytes of a torch model at the spec's input size."""
    import io

    import torch

    from edgekit.export.onnx import model_macs_params

    stats = model_macs_params(model, spec.input_shape())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {"params": int(stats["params"]), "macs": int(stats["macs"]), "size_bytes": buf.getbuffer().nbytes}


def eval_tensors(val: InMemorySplit) -> np.ndarray:
    """Stack the validation split's preprocessed tensors into ``(N, C, H, W)``."""
    return np.concatenate([val.tensor(i) for i in range(len(val))], 0)


def fp32_map50_95(ctx: RunContext) -> float:
    """MAP@0.5:0.95 of the FP32 model INT8 quantizes: the last compression step's, else the reference's.

    ``--max-drop`` is what INT8 may lose against it; compression's own loss is reported against the
    reference and the control, not charged to the calibrator (whose budget it would eat).
    """
    model_nodes = [n for n in ctx.record.nodes if n.stage == "reference" or n.stage.startswith("compress:")]
    return next(n.metric("map50_95") for n in reversed(model_nodes) if n.metric("map50_95") is not None)
