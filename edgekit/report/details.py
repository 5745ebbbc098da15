"""Typed views of what the report reads from a node's ``extra``: the report never looks up free-form keys.

A stage keeps more in ``extra`` than the report shows (raw figures for diagnosis), so each view reads only
its own fields and ignores the rest. :func:`details` parses a node's ``extra`` into a view; a record
written by an older edgekit, whose ``extra`` does not parse, gives the empty view (the section is left
out, the report is still written).

Example:
    >>> from edgekit.report.record import Node
    >>> node = Node(id="n", stage="bench", extra={"latencies_ms": [1.0, 2.0], "power_note": "no rail"})
    >>> view = details(node, BenchDetails)
    >>> view.latencies_ms, view.power_note, view.guard
    ([1.0, 2.0], 'no rail', None)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.device.state import DeviceState
from edgekit.report.record import Node


class _View(BaseModel):
    """A node's ``extra`` as one section of the report reads it (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")


View = TypeVar("View", bound=_View)


def details(node: Node | None, view: type[View]) -> View:
    """``node.extra`` as ``view``: a field whose value does not parse is left out (as if not recorded).

    Example:
        >>> node = Node(id="n", stage="bench", extra={"latencies_ms": "lost", "power_note": "no rail"})
        >>> details(node, BenchDetails).latencies_ms, details(node, BenchDetails).power_note
        ([], 'no rail')
    """
    data = dict(node.extra) if node is not None else {}
    while True:
        try:
            return view.model_validate(data)
        except ValidationError as exc:
            bad = {err["loc"][0] for err in exc.errors() if err["loc"]} & data.keys()
            if not bad:
                return view()
            for key in bad:
                del data[key]


def find(nodes: Iterable[Node], view: type[View], has: Callable[[View], Any]) -> tuple[Node, View] | None:
    """The first of ``nodes`` whose ``view`` has what the report section shows (``has`` is truthy), with it.

    Example:
        >>> nodes = [Node(id="a", stage="build"), Node(id="b", stage="build", extra={"candidates": [{}]})]
        >>> find(nodes, SearchDetails, lambda v: v.candidates)[0].id
        'b'
    """
    for node in nodes:
        found = details(node, view)
        if has(found):
            return node, found
    return None


class Figures(_View):
    """Accuracy figures kept in an ``extra`` (mAP, or teacher agreement)."""

    map50: float | None = None
    map50_95: float | None = None


# -- bench ---------------------------------------------------------------------------------------------
class GuardView(_View):
    """The device's correctness guard: its output on a fixed input against the host's."""

    checked: bool = False
    cosine: float | None = None
    reference: str | None = None
    reason: str | None = None


class CpuView(_View):
    """The device's CPU as its runner described it."""

    model: str | None = None
    arch: str | None = None
    int8_dot: str | None = None


class DeviceFacts(_View):
    """What the runner reported of the device: every fact, shown whole in the report's device table."""

    model_config = ConfigDict(extra="allow")

    def rows(self) -> list[tuple[str, Any]]:
        """Every fact the runner reported, in its order, as (name, value)."""
        return list((self.model_extra or {}).items())

    @property
    def cpu(self) -> CpuView | None:
        """The device's CPU, when the runner described it (an older runner gave only its architecture)."""
        raw = (self.model_extra or {}).get("cpu")
        return CpuView.model_validate(raw) if isinstance(raw, dict) else None


class LayerTime(_View):
    """One layer's time in the runtime's own profile."""

    layer: str | None = None
    type: str | None = None
    kernel: str | None = None
    ms: float | None = None


class RuntimeProfile(_View):
    """A runtime's own per-layer profile of the artifact on the device (OpenVINO reports one)."""

    layers: list[LayerTime] = Field(default_factory=list)
    inference_precision: str | None = None


class BenchDetails(_View):
    """The bench node's raw latencies, power note, device facts, guard, state and warnings."""

    latencies_ms: list[float] = Field(default_factory=list)
    power_note: str | None = None
    power_samples_in_window: int | None = None
    device: DeviceFacts | None = None
    arithmetic: str | None = None
    guard: GuardView | None = None
    state_before: dict[str, Any] | None = None
    state_after: dict[str, Any] | None = None
    throttling: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    runtime_report: dict[str, RuntimeProfile] | None = None

    @property
    def before(self) -> DeviceState:
        """The device's state before the timed loop."""
        return DeviceState.from_report(self.state_before)

    @property
    def after(self) -> DeviceState:
        """The device's state after the timed loop."""
        return DeviceState.from_report(self.state_after)


# -- INT8 ----------------------------------------------------------------------------------------------
class QuantizationView(_View):
    """How the artifact's INT8 was made, and which layers stayed float (under one of two names)."""

    method: str | None = None
    float_layers: list[str] | None = None
    keep_float: list[str] | None = None
    float_why: str | None = None


class DetectionAgreement(_View):
    """The build's check: its detections against FP32's on the check images."""

    kept: float | None = None
    score_error: float | None = None
    box_iou: float | None = None


class ParityView(_View):
    """The build's FP32 check (the detection figures the report shows)."""

    detections: DetectionAgreement | None = None


class BuildDetails(_View):
    """The build node's quantization and FP32 check."""

    quantization: QuantizationView | None = None
    parity: ParityView | None = None


class QuantizeDetails(_View):
    """The quantize node's layers kept in float."""

    keep_float: list[str] | None = None


class Candidate(_View):
    """One INT8 candidate ``--calibrator auto`` built and measured (or refused)."""

    name: str | None = None
    map50: float | None = None
    map50_95: float | None = None
    size_bytes: int | None = None
    drop: float | None = None
    latency_ms_p50: float | None = None
    chosen: bool = False
    error: str | None = None


class SearchDetails(_View):
    """A calibrator search's candidates and the FP32 figure their losses are against."""

    candidates: list[Candidate] = Field(default_factory=list)
    fp32_map50_95: float | None = None


class LayerTable(_View):
    """A per-layer table (columns vary by what measured it, so rows stay mappings)."""

    layers: list[dict[str, Any]] = Field(default_factory=list)


# -- compression and training --------------------------------------------------------------------------
class ControlDetails(_View):
    """``--control``: recipe − control, in points."""

    recipe_minus_control: Figures | None = None


class SwapInit(_View):
    """How the swapped blocks were initialised from the teacher."""

    copied: list[str] = Field(default_factory=list)
    fitted: list[str] = Field(default_factory=list)
    steps: int = 0
    widened: bool = False
    student_fed_steps: int | None = None
    fit_loss_first_epoch: dict[str, float] = Field(default_factory=dict)
    fit_loss: dict[str, float] = Field(default_factory=dict)
    after_init: Figures | None = None


class Sparsity(_View):
    """Slimming's sparsity: the share of weak channels before and after its training."""

    below: float | None = None
    fraction_before: float | None = None
    fraction_after: float | None = None
    dead_after: float | None = None
    shrink: str | None = None


class SlimStages(_View):
    """Slimming's accuracy after its sparsity training and after the cut."""

    after_sparsity: Figures = Field(default_factory=Figures)
    after_prune: Figures = Field(default_factory=Figures)


class CompressDetails(_View):
    """A compression step's swap init, slimming stages and BatchNorm scales."""

    init: SwapInit | None = None
    stages: SlimStages | None = None
    sparsity: Sparsity = Field(default_factory=Sparsity)
    gamma_before: list[float] = Field(default_factory=list)
    gamma_after: list[float] = Field(default_factory=list)


class CurvePoint(Figures):
    """One cycle of the reference's training."""

    epochs: float | None = None
    lr: float | None = None
    wall_s: float | None = None


class TrainDetails(_View):
    """The reference's training curve and why it stopped."""

    curve: list[CurvePoint] = Field(default_factory=list)
    epochs: float | None = None
    wall_s: float | None = None
    stopped: str | None = None
