import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from edgekit.core.errors import DataError, EdgekitError
from edgekit.report.record import Node, RunRecord, latency_stats, latency_warnings, node_id
from edgekit.report.summary import build_summary, write_summary

DESIGN_KEYS = {
    "target",
    "backend",
    "precision",
    "recipe",
    "metric",  # issue 43: map, or teacher_agreement for a model without labels
    "emulator",  # issue 44: the emulated board (qemu-user <cpu>), or null on a real device
    "emulator_time_ms",  # issue 44: an emulated board's timings (latency_ms stays null there)
    "baseline",  # issue 45: the run against its baseline in the run history (--baseline), or null
    "reference",
    "deployed",
    "latency_ms",
    "fps",
    "power_w",
    "energy_mj_per_inference",
    "calibration",
    "control",  # None unless --control; recipe − control (issue 17)
    "gates",
    "run_id",
    "status",
}


def test_record_round_trips_through_save_and_load(tmp_path, record):
    path = record.save(tmp_path / "record.json")
    raw = json.loads(path.read_text())
    assert raw["schema"] == 1 and raw["run_id"] == record.run_id
    loaded = RunRecord.load(path)
    assert loaded == record
    assert loaded.node("bench").extra["latencies_ms"] == record.node("bench").extra["latencies_ms"]
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind


def test_node_ids_are_deterministic_and_chained(record_factory):
    first, second = record_factory(), record_factory()
    assert [n.id for n in first.nodes] == [n.id for n in second.nodes]
    assert len({n.id for n in first.nodes}) == len(first.nodes)
    assert first.nodes[0].parent is None
    assert all(child.parent == parent.id for parent, child in zip(first.nodes, first.nodes[1:], strict=False))
    base = node_id("export", {"opset": 17}, "p", {"name": "local"})
    assert base == node_id("export", {"opset": 17}, "p", {"name": "local"})
    assert base != node_id("export", {"opset": 18}, "p", {"name": "local"})
    assert base != node_id("export", {"opset": 17}, "q", {"name": "local"})
    assert base != node_id("export", {"opset": 17}, "p", {"name": "jetson"})


def test_node_returns_the_last_of_a_stage(record):
    record.child("eval", {"split": "test"}, metrics={"map50": 0.5})
    assert record.node("eval").config == {"split": "test"}
    assert record.node("no-such-stage") is None


def test_summary_has_exactly_the_design_schema(record, numbers):
    ref, l1, dep = numbers["reference"], numbers["l1"], numbers["deployed_eval"]
    summary = build_summary(record)
    assert set(summary) == DESIGN_KEYS
    assert summary["control"] is None  # no control node without --control
    assert set(summary["reference"]) == {"params", "macs", "map50", "map50_95"}
    assert set(summary["deployed"]) == {"params", "macs", "artifact_bytes", "map50", "map50_95"}
    assert set(summary["latency_ms"]) == {"mean", "p50", "p90", "p99"}
    assert set(summary["calibration"]) == {"name", "version", "sha256"}
    assert summary["reference"] == {k: ref[k] for k in ("params", "macs", "map50", "map50_95")}
    assert summary["deployed"] == {
        "params": l1["params"],
        "macs": l1["macs"],
        "artifact_bytes": numbers["artifact_bytes"],
        **dep,
    }
    stats = record.node("bench").metrics["latency_ms"]
    assert summary["latency_ms"] == {k: stats[k] for k in ("mean", "p50", "p90", "p99")}
    assert summary["fps"] == pytest.approx(1000.0 / stats["mean"], rel=1e-12)
    assert summary["calibration"] == numbers["calibration"]
    assert (summary["target"], summary["backend"], summary["precision"]) == ("local", "onnxruntime", "int8")
    assert summary["gates"] == {"max_map_drop": {"limit": 0.05, "value": 0.034, "passed": True}}


def test_summary_keeps_unmeasured_values_null(tmp_path, failed_record):
    failed_record.calibration = None
    path = write_summary(failed_record, tmp_path)
    summary = json.loads(path.read_text())
    assert set(summary) == DESIGN_KEYS
    assert summary["power_w"] is None and summary["energy_mj_per_inference"] is None
    assert summary["fps"] is None
    assert summary["latency_ms"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert summary["deployed"]["artifact_bytes"] is None and summary["deployed"]["map50_95"] is None
    assert summary["calibration"] == {"name": None, "version": None, "sha256": None}
    assert summary["status"] == "failed"


def test_latency_stats_on_known_lists():
    stats = latency_stats([float(v) for v in range(100, 0, -1)])
    assert stats["n"] == 100
    assert (stats["min"], stats["p50"], stats["p90"], stats["p95"], stats["p99"], stats["max"]) == (
        1.0,
        50.0,
        90.0,
        95.0,
        99.0,
        100.0,
    )
    assert stats["mean"] == pytest.approx(50.5, abs=1e-12)
    assert stats["std"] == pytest.approx(math.sqrt((100**2 - 1) / 12), abs=1e-9)
    assert stats["cv"] == pytest.approx(stats["std"] / 50.5, abs=1e-12)
    # (1 - 0.9) * 10 is 0.9999999999999998 in floating point; the rank must still be 9, not 10.
    small = latency_stats(list(range(1, 11)))
    assert (small["p50"], small["p90"], small["p95"], small["p99"]) == (5.0, 9.0, 10.0, 10.0)
    assert latency_stats([4.2])["p99"] == 4.2


def test_latency_warnings_flag_noise_and_drift_only():
    rng = np.random.default_rng(0)
    steady = list(1.0 + rng.normal(0.0, 0.01, 1000))
    assert latency_warnings(steady) == []
    noisy = list(1.0 + np.abs(rng.normal(0.0, 0.2, 1000)))
    (warning,) = latency_warnings(noisy)
    assert warning.startswith("latency is noisy: CV ") and "idle device" in warning
    # 1.0 ms for the first 90 % of the run, 1.1 ms after: CV stays under 5 %, the drift is caught.
    drifting = [1.0] * 900 + [1.1] * 100
    (warning,) = latency_warnings(drifting)
    assert "median of the last 10 % 1.100 ms vs first 10 % 1.000 ms (+10 %)" in warning
    assert latency_warnings([5.0, 50.0] * 5) == []  # too few samples to judge


@pytest.mark.parametrize("bad", [[], [1.0, -0.5], [1.0, float("nan")]])
def test_latency_stats_rejects_bad_input(bad):
    with pytest.raises(DataError, match="latencies"):
        latency_stats(bad)


def test_pareto_front_by_cost(record):
    assert [n.stage for n in record.pareto("macs")] == ["compress:l1", "compress:slim", "train", "reference"]
    assert [n.stage for n in record.pareto()] == [n.stage for n in record.pareto("macs")]
    assert [n.stage for n in record.pareto("size_bytes")] == ["quantize", "train", "reference"]
    target = {"name": "local"}
    rec = RunRecord.new("p", [], target, {})
    for stage, macs, acc in (("a", 100, 0.5), ("b", 200, 0.4), ("c", 300, 0.6), ("d", 50, 0.3)):
        rec.add(Node.create(stage, {}, None, target, metrics={"macs": macs, "map50_95": acc}))
    assert [n.stage for n in rec.pareto()] == ["d", "a", "c"]  # b costs more than a and is less accurate


def test_metrics_are_checked():
    with pytest.raises(ValidationError, match="map50"):
        Node.create("eval", {}, None, {}, metrics={"map50": 1.5})
    with pytest.raises(ValidationError, match="params"):
        Node.create("export", {}, None, {}, metrics={"params": float("inf")})


def test_load_of_a_missing_record_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "record.json"
    with pytest.raises(EdgekitError, match="does not exist") as info:
        RunRecord.load(path)
    assert isinstance(info.value, DataError)
    assert str(path) in info.value.message and "record.json" in info.value.hint


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "not an edgekit run record"),
        ('{"schema": 99, "run_id": "x", "nodes": []}', "schema 99"),
    ],
)
def test_load_of_a_non_record_names_the_file(tmp_path, text, words):
    path = tmp_path / "record.json"
    path.write_text(text)
    with pytest.raises(DataError, match=words) as info:
        RunRecord.load(path)
    assert str(path) in info.value.message


def test_int8_budget_is_against_the_model_it_quantizes(record, numbers):
    """--max-drop is charged against the last compression step's FP32 mAP, not the uncompressed reference."""
    from types import SimpleNamespace

    from edgekit.stages.context import fp32_map50_95

    # The record's eval (INT8) node comes after the l1 step; the baseline stays the l1 step's FP32 figure.
    assert fp32_map50_95(SimpleNamespace(record=record)) == numbers["l1"]["map50_95"]
    record.nodes[:] = [n for n in record.nodes if not n.stage.startswith("compress:")]
    assert fp32_map50_95(SimpleNamespace(record=record)) == numbers["reference"]["map50_95"]
