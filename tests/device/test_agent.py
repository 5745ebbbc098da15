from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.backends.contract.base import BuildOptions
from edgekit.core.errors import DeviceError, ModelError
from edgekit.core.registry import get_backend
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.power import NOT_MEASURED, NullSampler, PowerSampler, energy_per_inference
from edgekit.device.runner_io import parse_runner_output
from edgekit.device.transport import CommandResult, LocalTransport
from edgekit.runners import detcore

# -- energy -----------------------------------------------------------------------------------------


def test_energy_of_a_linear_trace_is_exact_with_interpolated_edges():
    # P(t) = 2 + t W sampled at uneven times; window [0.35, 4.7] falls between samples.
    ts = [0.0, 0.1, 0.9, 1.0, 2.5, 4.0, 4.2, 5.0]
    samples = [(t, 2.0 + t) for t in ts]
    t0, t1, n = 0.35, 4.7, 50
    exact_j = 2 * (t1 - t0) + (t1**2 - t0**2) / 2
    e = energy_per_inference(samples, t0, t1, n, idle_w=1.5)
    assert e.mj_per_inference == pytest.approx(exact_j * 1e3 / n, rel=1e-12)
    assert e.dynamic_mj_per_inference == pytest.approx((exact_j - 1.5 * (t1 - t0)) * 1e3 / n, rel=1e-12)
    assert e.mean_power_w == pytest.approx(exact_j / (t1 - t0), rel=1e-12)
    assert (e.window_s, e.samples_in_window) == (pytest.approx(4.35), 5)


def test_energy_of_a_sine_trace_converges_to_the_integral():
    # P(t) = 3 + sin(t) sampled at 1 kHz over [0, 10]: integral 30 + 1 - cos(10).
    t = np.arange(0, 10.0005, 0.001)
    e = energy_per_inference(list(zip(t, 3 + np.sin(t), strict=True)), 0.0, 10.0, n=1000)
    assert e.mj_per_inference == pytest.approx((31 - np.cos(10)) * 1e3 / 1000, rel=1e-6)


def test_energy_is_none_without_samples_and_rejects_empty_windows():
    assert energy_per_inference([], 0.0, 1.0, 10) is None
    with pytest.raises(ValueError, match="t1 > t0"):
        energy_per_inference([(0.0, 1.0)], 1.0, 1.0, 10)


def test_null_sampler_reports_not_measured():
    sampler = NullSampler()
    assert isinstance(sampler, PowerSampler)
    sampler.start()
    assert sampler.stop() == []
    assert sampler.rails == NOT_MEASURED


# -- agent --------------------------------------------------------------------------------------------


def _tiny_onnx(path: Path) -> Path:
    """images [1,3,16,16] -> 1x1 Conv to 7 ch -> [1,7,256] -> transpose -> sigmoid: yolov5 rows, 2 classes."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [7, 3, 1, 1], rng.normal(size=21).astype(np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 7, 256])
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 7])],
        [w, shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class ConstantSampler:
    """A sensor reading a constant 5 W, timestamped on this host's monotonic clock (the runner's too)."""

    name = "constant"
    rails = "test rail"
    files: tuple[str, ...] = ()
    measures = True
    note = ""
    facts: dict = {}

    def start(self, session=None) -> None:
        self.t0 = time.monotonic()

    def stop(self) -> list[tuple[float, float]]:
        return [(self.t0, 5.0), (time.monotonic(), 5.0)]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("agent")
    opts = BuildOptions(precision="fp32", threads=1)
    return get_backend("onnxruntime").build(_tiny_onnx(work / "tiny.onnx"), opts, work / "art").dir


BENCH = dict(warmup=2, min_warmup_s=0.0, iterations=30, min_seconds=0.05, threads=1, timeout=60)


def test_bench_without_sensor_reports_none_never_zero(artifact_dir, tmp_path):
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    res = Agent(LocalTransport(root=tmp_path)).bench(
        artifact_dir, BenchPlan(bench_input=x, eval_inputs=None, **BENCH), progress=False
    )
    assert (res.power_w, res.energy_mj, res.power_note) == (None, None, NOT_MEASURED)
    assert res.detections is None and res.runtime == "onnxruntime" and res.threads == 1
    assert len(res.latencies_ms) >= 30 and res.fps == pytest.approx(len(res.latencies_ms) / res.wall_s)
    assert res.stats["p50"] <= res.stats["p99"] and res.device["cpu_count"] >= 1
    summary = res.to_dict()
    assert summary["power_w"] is None and summary["eval_images"] is None and "latencies_ms" not in summary
    assert list(tmp_path.iterdir()) == []  # work dir removed


def test_bench_with_a_sampler_integrates_over_the_runner_window(artifact_dir, tmp_path):
    x = np.zeros((1, 3, 16, 16), np.float32)
    evals = np.random.default_rng(4).random((3, 3, 16, 16), dtype=np.float32)
    agent = Agent(LocalTransport(root=tmp_path), sampler=ConstantSampler())
    res = agent.bench(
        artifact_dir, BenchPlan(bench_input=x, eval_inputs=evals, conf=0.0, **BENCH), progress=False
    )
    assert res.power_w == pytest.approx(5.0)
    window = res.raw["window"]["t1"] - res.raw["window"]["t0"]
    assert res.energy_mj == pytest.approx(5.0 * window * 1e3 / len(res.latencies_ms))
    assert res.power_note == "constant: test rail"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(artifact_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for img, dets in zip(evals, res.detections, strict=True):
        ref = detcore.candidates(sess.run(None, {"images": img[None]})[0], "yolov5", conf=0.0)
        np.testing.assert_allclose(dets, ref, rtol=1e-6, atol=1e-6)


def test_garbage_runner_output_is_a_device_error_and_work_dir_is_cleaned(artifact_dir, tmp_path):
    # /bin/echo as "python" prints its arguments instead of a JSON line.
    agent = Agent(LocalTransport(root=tmp_path), python="/bin/echo")
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(DeviceError, match="cannot read the runner's result") as info:
        agent.bench(artifact_dir, BenchPlan(bench_input=x, **BENCH), progress=False)
    assert "ort_run.py --artifact" in info.value.message  # the stdout tail is shown
    assert list(tmp_path.iterdir()) == []


def test_failing_runner_raises_with_its_error_line(artifact_dir, tmp_path):
    agent = Agent(LocalTransport(root=tmp_path))
    wrong = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(DeviceError, match="expects") as info:
        agent.bench(artifact_dir, BenchPlan(bench_input=wrong, **BENCH), progress=False)
    assert "exited 2" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_tampered_artifact_is_refused_before_pushing(artifact_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    (copy / "model.onnx").write_bytes(b"x" + (copy / "model.onnx").read_bytes())
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Agent(LocalTransport(root=tmp_path)).bench(
            copy, BenchPlan(bench_input=np.zeros((1, 3, 16, 16)), **BENCH)
        )


def test_parse_runner_output_rejects_several_lines():
    res = CommandResult(["r"], 0, '{"a": 1}\n{"b": 2}\n', "", 0.1)
    with pytest.raises(DeviceError, match="exactly one JSON line"):
        parse_runner_output(res)
