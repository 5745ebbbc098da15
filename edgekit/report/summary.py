"""The flat ``summary.json`` of a run: the deployed result in a schema scripts and CI can rely on.

Every key is always present; a figure that was not measured is ``null``, never a made-up 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgekit.core.files import atomic_write_json
from edgekit.report.details import ControlDetails, details
from edgekit.report.record import Gate, Node, RunRecord

LATENCY_KEYS = ("mean", "p50", "p90", "p99")


def _is_model_stage(stage: str) -> bool:
    return stage == "export" or stage == "compress" or stage.startswith("compress:")


def _latest(nodes: list[Node], key: str) -> Any:
    """The value of ``key`` from the last of ``nodes`` that reports it."""
    return next((n.metric(key) for n in reversed(nodes) if n.metric(key) is not None), None)


def _pick(node: Node | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: node.metric(k) if node else None for k in keys}


def _setting(record: RunRecord, key: str) -> Any:
    """A build setting: the target says it; the build node's config is the fallback."""
    if record.target.get(key) is not None:
        return record.target[key]
    build = record.node("build")
    return build.config.get(key) if build else None


def _deployed(record: RunRecord) -> dict[str, Any]:
    model_nodes = [n for n in record.nodes if _is_model_stage(n.stage)]
    build, evaluation = record.node("build"), record.node("eval")
    return {
        "params": _latest(model_nodes, "params"),
        "macs": _latest(model_nodes, "macs"),
        "artifact_bytes": build.metric("size_bytes") if build else None,
        "map50": evaluation.metric("map50") if evaluation else None,
        "map50_95": evaluation.metric("map50_95") if evaluation else None,
    }


def _calibration(record: RunRecord) -> dict[str, Any]:
    calib = record.calibration or {}
    return {k: calib.get(k) for k in ("name", "version", "sha256")}


def _control(record: RunRecord) -> dict[str, Any] | None:
    node = record.node("control")
    if node is None:
        return None
    gain = details(node, ControlDetails).recipe_minus_control
    return {
        **_pick(node, ("params", "macs", "map50", "map50_95")),
        "epochs": node.config.get("epochs"),
        "recipe_minus_control": gain.model_dump() if gain is not None else None,
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelFigures(_Strict):
    """A model's size and accuracy (``None``: not measured)."""

    params: float | None = None
    macs: float | None = None
    map50: float | None = None
    map50_95: float | None = None


class DeployedFigures(ModelFigures):
    """The deployed model's figures: mAP from the device's own outputs, and the artifact's size."""

    artifact_bytes: int | None = None


class Latency(_Strict):
    """Per-inference latency on the device, milliseconds."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class CalibrationRef(_Strict):
    """Which calibration set (name, version, content hash) the INT8 build used."""

    name: str | None = None
    version: int | None = None
    sha256: str | None = None


class ControlFigures(ModelFigures):
    """``--control``: the compressed architecture trained from scratch, and recipe − control in points."""

    epochs: float | None = None
    recipe_minus_control: dict[str, float | None] | float | None = None


class Summary(_Strict):
    """The schema of ``summary.json``: every key always present, ``None`` where nothing was measured.

    The report and ``edgekit report --compare`` read this model, not the record's free-form extras.

    ``metric`` says what the ``map50`` / ``map50_95`` figures are: ``map`` (against the dataset's labels)
    or ``teacher_agreement`` (a user's model without labels: mAP of the detections against the FP32
    model's own, on held-back images; not the model's accuracy). :func:`metric_label` names it.

    ``baseline`` is the run against its baseline in the run history (``--baseline``): the baseline's id,
    how it was chosen, and each figure's check (:class:`edgekit.history.gates.Verdict`).

    On an emulated board (``--device sim``) ``emulator`` names it (``qemu-user cortex-a72``); its timings
    go to ``emulator_time_ms``, and ``latency_ms`` / ``fps`` stay ``None``: emulator time is not board time.
    """

    target: str | None
    backend: str | None
    precision: str | None
    recipe: str | None
    metric: Literal["map", "teacher_agreement"] = "map"
    reference: ModelFigures
    deployed: DeployedFigures
    latency_ms: Latency
    fps: float | None
    emulator: str | None = None
    emulator_time_ms: Latency | None = None
    power_w: float | None
    energy_mj_per_inference: float | None
    calibration: CalibrationRef
    control: ControlFigures | None
    gates: dict[str, Gate]
    baseline: dict[str, Any] | None = None
    run_id: str
    status: str

    @classmethod
    def of(cls, record: RunRecord) -> Summary:
        """The summary of ``record`` (see :func:`build_summary`)."""
        return cls.model_validate(_flatten(record))


def build_summary(record: RunRecord) -> dict[str, Any]:
    """:class:`Summary` of ``record`` as the JSON-ready dict written to ``summary.json``."""
    return Summary.of(record).model_dump(mode="json")


def _flatten(record: RunRecord) -> dict[str, Any]:
    """Flatten a record into the summary schema of DESIGN.md (plus gates, run id and status).

    ``reference`` comes from the ``reference`` node; ``deployed`` params/MACs from the last
    compress/export node that reports them, ``artifact_bytes`` from ``build``, mAP from ``eval``;
    latency, FPS, power and energy from ``bench``; ``control`` (``--control`` runs, else None) from
    ``control``, with recipe − control in mAP points.

    Example:
        >>> rec = RunRecord.new("r1", [], {"name": "local", "backend": "onnxruntime"}, {"name": "default"})
        >>> s = build_summary(rec)
        >>> s["backend"], s["fps"], s["deployed"]["map50"]
        ('onnxruntime', None, None)
    """
    bench = record.node("bench")
    latency = (bench.metric("latency_ms") if bench else None) or {}
    emulator = record.target.get("emulator")
    timed = {k: latency.get(k) for k in LATENCY_KEYS}
    return {
        "target": record.target.get("name"),
        "backend": _setting(record, "backend"),
        "precision": _setting(record, "precision"),
        "recipe": record.recipe.get("name"),
        "metric": run_metric(record),
        "reference": _pick(record.node("reference"), ("params", "macs", "map50", "map50_95")),
        "deployed": _deployed(record),
        "latency_ms": {} if emulator else timed,
        "fps": bench.metric("fps") if bench and not emulator else None,
        "emulator": emulator,
        "emulator_time_ms": timed if emulator else None,
        "power_w": bench.metric("power_w") if bench else None,
        "energy_mj_per_inference": bench.metric("energy_mj_per_inference") if bench else None,
        "calibration": _calibration(record),
        "control": _control(record),
        "gates": dict(record.gates),
        "baseline": record.baseline,
        "run_id": record.run_id,
        "status": record.status,
    }


def run_metric(record: RunRecord) -> str:
    """``map`` or ``teacher_agreement``: what the run's accuracy figures measure (its data node says)."""
    data = record.node("data")
    return (data.config.get("metric") if data else None) or "map"


def metric_label(metric: str, iou: str) -> str:
    """How a report names the accuracy figure at ``iou`` (``0.5`` or ``0.5:0.95``).

    Example:
        >>> metric_label("teacher_agreement", "0.5")
        'teacher agreement@0.5'
    """
    return f"teacher agreement@{iou}" if metric == "teacher_agreement" else f"mAP@{iou}"


def write_summary(record: RunRecord, run_dir: str | Path) -> Path:
    """Write ``run_dir/summary.json`` from the record, atomically, and return its path."""
    return atomic_write_json(Path(run_dir) / "summary.json", build_summary(record))
