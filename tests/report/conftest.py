"""Realistic run records (test data written by hand, not mocks) for the report tests."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.report.record import Gate, RunRecord, latency_stats

TARGET = {"name": "local", "board": "host", "backend": "onnxruntime", "precision": "int8", "input_size": 320}
RECIPE = {"name": "default", "steps": [{"kind": "slim", "ratio": 0.3}, {"kind": "l1", "ratio": 0.5}]}
CALIBRATION = {"name": "shapes-calib", "version": 2, "sha256": "9f" * 32}
COMMAND = ["edgekit", "deploy", "--target", "local", "--recipe", "default"]

REFERENCE = {
    "params": 1_234_567,
    "macs": 456_000_000,
    "size_bytes": 4_945_000,
    "map50": 0.781,
    "map50_95": 0.523,
}
SLIM = {"params": 862_000, "macs": 318_000_000, "map50": 0.772, "map50_95": 0.511}
L1 = {"params": 612_345, "macs": 230_100_000, "map50": 0.764, "map50_95": 0.502}
DEPLOYED_EVAL = {"map50": 0.752, "map50_95": 0.489}
ARTIFACT_BYTES = 684_032


def _latencies(n: int = 500, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    return [round(float(v), 4) for v in 3.0 + rng.lognormal(mean=-0.5, sigma=0.45, size=n)]


def _gammas(n: int, scale: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(v) for v in np.abs(rng.normal(0.0, scale, size=n))]


def build_record(run_id: str = "20250101-120000-local") -> RunRecord:
    """A full, successful int8 deploy on the local target."""
    rec = RunRecord.new(run_id, COMMAND, TARGET, RECIPE)
    rec.created = "2025-01-01T12:00:00+00:00"
    rec.calibration = dict(CALIBRATION)
    tools = {"torch": "2.13.0", "torch-pruning": "1.6.1"}
    rec.child(
        "data",
        {"dataset": "shapes", "seed": 0},
        label="procedural shapes, 400 train / 100 val",
        outputs={"data/data.yaml": "ab" * 32},
        metrics={"images": 500},
        seconds=2.1,
    )
    rec.child(
        "train",
        {"epochs": 30, "lr": 0.01},
        label="TinyYolo, 30 epochs",
        tools=tools,
        metrics={**REFERENCE, "wall_s": 412.0},
        seconds=412.0,
        cached=True,
    )
    rec.child(
        "reference", {"conf": 0.001, "iou": 0.6}, label="FP32 on host", metrics=dict(REFERENCE), seconds=8.4
    )
    rec.child(
        "compress:slim",
        {"ratio": 0.3, "sparsity": 1e-4},
        label="network slimming 30%",
        tools=tools,
        metrics=dict(SLIM),
        extra={"gamma_before": _gammas(512, 0.6, 1), "gamma_after": _gammas(358, 0.9, 2)},
        seconds=95.2,
    )
    rec.child(
        "compress:l1",
        {"ratio": 0.5},
        label="L1 filter pruning 50%",
        tools=tools,
        metrics=dict(L1),
        seconds=120.5,
    )
    rec.child(
        "export",
        {"opset": 17},
        label="ONNX opset 17",
        tools={"onnx": "1.23.2"},
        outputs={"model.onnx": "cd" * 32},
        metrics={"size_bytes": 2_460_000},
        seconds=3.2,
    )
    candidates = [
        {
            "name": "minmax",
            "map50": 0.731,
            "map50_95": 0.466,
            "size_bytes": ARTIFACT_BYTES,
            "drop": 3.6,
            "latency_ms_p50": 3.61,
            "chosen": False,
        },
        {
            "name": "percentile",
            "map50": 0.752,
            "map50_95": 0.489,
            "size_bytes": ARTIFACT_BYTES,
            "drop": 1.3,
            "latency_ms_p50": 3.60,
            "chosen": True,
        },
        {
            "name": "entropy",
            "map50": 0.747,
            "map50_95": 0.481,
            "size_bytes": ARTIFACT_BYTES,
            "drop": 2.1,
            "latency_ms_p50": 3.62,
            "chosen": False,
        },
        {"name": "minmax-float1", "error": "scores cosine 0.93 < 0.95", "chosen": False},
    ]
    layers = [
        {"layer": "backbone.0.conv", "sensitivity": 0.0123, "precision": "fp32"},
        {"layer": "backbone.3.conv", "sensitivity": 0.0021, "precision": "int8"},
        {"layer": "head.conv", "sensitivity": 0.0089, "precision": "int8"},
    ]
    rec.child(
        "quantize",
        {"calibrator": "percentile", "per_channel": True},
        label="QDQ int8 (percentile)",
        tools={"onnxruntime": "1.32.0"},
        inputs={"calibration": CALIBRATION["sha256"]},
        metrics={"size_bytes": ARTIFACT_BYTES, **DEPLOYED_EVAL},
        extra={"candidates": candidates, "layers": layers, "fp32_map50_95": L1["map50_95"]},
        seconds=64.0,
    )
    rec.child(
        "build",
        {"backend": "onnxruntime", "precision": "int8"},
        label="onnxruntime artifact",
        tools={"onnxruntime": "1.32.0"},
        outputs={"artifact/model.onnx": "ef" * 32},
        metrics={"size_bytes": ARTIFACT_BYTES},
        seconds=0.8,
    )
    rec.child(
        "eval", {"split": "val"}, label="device outputs, 100 images", metrics=dict(DEPLOYED_EVAL), seconds=5.5
    )
    latencies = _latencies()
    stats = latency_stats(latencies)
    rec.child(
        "bench",
        {"warmup": 20, "runs": 500, "threads": 2},
        label="local, 2 threads",
        tools={"onnxruntime": "1.32.0"},
        metrics={"latency_ms": stats, "fps": 1000.0 / stats["mean"]},
        extra={"latencies_ms": latencies, "device": {"name": "local", "cpu": "x86_64", "threads": 2}},
        seconds=2.3,
    )
    rec.gates = {"max_map_drop": Gate(limit=0.05, value=0.034, passed=True)}
    rec.status = "ok"
    return rec


def build_failed_record() -> RunRecord:
    """A run that stopped at the build stage with an error and a hint."""
    rec = build_record("20250101-130000-rk3588")
    rec.nodes = [n for n in rec.nodes if n.stage not in ("build", "eval", "bench")]
    failed = rec.child(
        "build",
        {"backend": "mnn", "precision": "int8"},
        label="MNN artifact",
        status="failed",
        error={"message": "MNNConvert exited 1: unsupported op GridSample", "hint": "x"},
    )
    failed.seconds = 1.2
    rec.status, rec.failed_stage = "failed", "build"
    rec.error = {
        "message": "backend 'mnn' cannot run op(s): GridSample",
        "hint": "replace GridSample in the model, or pick a target whose runtime supports it",
    }
    rec.gates = {}
    return rec


@pytest.fixture
def record() -> RunRecord:
    return build_record()


@pytest.fixture
def failed_record() -> RunRecord:
    return build_failed_record()


@pytest.fixture
def run_dir(tmp_path, record):
    folder = tmp_path / record.run_id
    folder.mkdir()
    record.save(folder / "record.json")
    return folder


@pytest.fixture
def record_factory():
    """Builds a fresh copy of the successful record (two calls give equal, independent records)."""
    return build_record


@pytest.fixture
def numbers() -> dict:
    """The figures the fake record was built from, to compare reports and summaries against."""
    return {
        "reference": REFERENCE,
        "l1": L1,
        "deployed_eval": DEPLOYED_EVAL,
        "artifact_bytes": ARTIFACT_BYTES,
        "calibration": CALIBRATION,
    }
