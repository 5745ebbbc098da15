"""The flat ``summary.json`` of a run: the deployed result in a schema scripts and CI can rely on.

Every key is always present; a figure that was not measured is ``null``, never a made-up 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.fsutil import atomic_write_json
from edgekit.report.record import Node, RunRecord

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
    return {
        **_pick(node, ("params", "macs", "map50", "map50_95")),
        "epochs": node.config.get("epochs"),
        "recipe_minus_control": node.extra.get("recipe_minus_control"),
    }


def build_summary(record: RunRecord) -> dict[str, Any]:
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
    return {
        "target": record.target.get("name"),
        "backend": _setting(record, "backend"),
        "precision": _setting(record, "precision"),
        "recipe": record.recipe.get("name"),
        "reference": _pick(record.node("reference"), ("params", "macs", "map50", "map50_95")),
        "deployed": _deployed(record),
        "latency_ms": {k: latency.get(k) for k in LATENCY_KEYS},
        "fps": bench.metric("fps") if bench else None,
        "power_w": bench.metric("power_w") if bench else None,
        "energy_mj_per_inference": bench.metric("energy_mj_per_inference") if bench else None,
        "calibration": _calibration(record),
        "control": _control(record),
        "gates": {name: gate.model_dump() for name, gate in record.gates.items()},
        "run_id": record.run_id,
        "status": record.status,
    }


def write_summary(record: RunRecord, run_dir: str | Path) -> Path:
    """Write ``run_dir/summary.json`` from the record, atomically, and return its path."""
    return atomic_write_json(Path(run_dir) / "summary.json", build_summary(record))
