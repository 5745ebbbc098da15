"""TensorRT's device build: staged on the host, built and checked on a (simulated) Jetson over SSH.

No GPU and no TensorRT exist here. The simulated board's ``trtexec`` is a test double (ONNX Runtime
behind trtexec's command line and output format) so the staging, push, build, fetch, sidecar
completion, on-device check, timing and eval paths run end to end; on a device without trtexec the
build stops with one error naming what to install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit.backends.contract.base import Artifact, BuildOptions
from edgekit.backends.tensorrt.form import quantize_trt_qdq
from edgekit.bench_run import bench_run
from edgekit.core.errors import DeviceError, ModelError
from edgekit.core.registry import get_backend
from edgekit.device.agent import Agent
from edgekit.device.transport import LocalTransport
from edgekit.quantize import quantize_int8
from edgekit.report.record import RunRecord
from tests.device.fakeboard.fakeboard import make_fakeboard
from tests.device.sshbed import SKIP_NO_SSHD, SshServer, netns_available, sshd_available
from tests.device.test_agent import _tiny_onnx

OPTS = BuildOptions(precision="int8", threads=1)


def _calib():
    rng = np.random.default_rng(1)
    return [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    work = tmp_path_factory.mktemp("trt")
    fp32 = _tiny_onnx(work / "tiny.onnx")
    trt = quantize_trt_qdq(
        fp32, work / "trt_qdq.onnx", _calib, method="minmax", keep_float=None, progress=False
    )
    ort = quantize_int8(fp32, work / "ort_qdq.onnx", _calib, method="minmax", keep_float=None, progress=False)
    return work, fp32, trt.path, ort.path


@pytest.fixture(scope="module")
def staged(models):
    work, fp32, trt_qdq, _ = models
    return get_backend("tensorrt").build(trt_qdq, OPTS, work / "staged", reference=fp32)


def test_the_host_stages_the_trt_form_onnx_and_checks_it_against_fp32(staged):
    assert staged.files == {"source": "model.onnx"}
    assert staged.meta["device_build"]["state"] == "staged"
    assert staged.meta["device_build"]["precision_flags"] == ["int8", "fp16"]
    assert staged.meta["parity"]["checked"] and staged.meta["parity"]["outputs"][0]["cosine"] > 0.98


def test_onnx_runtimes_default_qdq_is_refused_naming_trts_rules(models, tmp_path):
    _, fp32, _, ort_qdq = models
    with pytest.raises(ModelError, match="not in TensorRT's form") as info:
        get_backend("tensorrt").build(ort_qdq, OPTS, tmp_path / "x", reference=fp32)
    assert "signed INT8" in info.value.message and "quantize_trt_qdq" in info.value.hint
    assert not (tmp_path / "x").exists()


def test_a_device_without_tensorrt_gives_one_error_naming_what_to_install(staged, tmp_path):
    with pytest.raises(DeviceError) as info:
        Agent(LocalTransport(root=tmp_path)).build_on_device(staged.dir, tmp_path / "built", progress=False)
    assert "sudo apt install tensorrt" in info.value.message
    assert not (tmp_path / "built").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("edgekit-")] == []  # work folder removed


@pytest.fixture(scope="module")
def jetson(tmp_path_factory):
    if not sshd_available():
        pytest.skip(reason=SKIP_NO_SSHD)
    pytest.importorskip("paramiko", reason="paramiko not installed (pip install 'edgekit[ssh]')")
    folder = tmp_path_factory.mktemp("jetson")
    env = make_fakeboard(folder, 8.0, 0.5)
    srv = SshServer(
        folder / "ssh",
        netns=netns_available(),
        path_prefix=str(folder / "bin"),
        env={"EDGEKIT_FAKEBOARD": env["EDGEKIT_FAKEBOARD"], "EDGEKIT_SYSFS_ROOT": env["EDGEKIT_SYSFS_ROOT"]},
    )
    srv.start()
    yield srv
    srv.close()


def test_the_engine_is_built_on_the_board_fetched_and_checked_there(jetson, staged, tmp_path):
    with jetson.transport() as t:
        art = Agent(t, python=sys.executable).build_on_device(staged.dir, tmp_path / "built", progress=False)
    assert isinstance(art, Artifact) and art.files["model"] == "model.engine"
    build = art.meta["device_build"]
    assert build["state"] == "built" and build["on"].startswith("ssh://") and build["version"] == "8.5.2"
    assert build["check"]["passed"] and "--int8" in build["argv"]
    assert art.meta["tools"]["tensorrt"] == "8.5.2"
    Artifact.load(art.dir)  # hashes verified, engine included
    assert not jetson.processes("trt_run.py")


def test_bench_of_the_engine_over_ssh_writes_a_run_with_the_guard_checked(jetson, staged, tmp_path):
    with jetson.transport() as t:
        art = Agent(t, python=sys.executable).build_on_device(staged.dir, tmp_path / "built", progress=False)
    spec = {
        "name": "sim-jetson-trt",
        "description": "simulated Jetson",
        "board": "jetson-xavier-nx",
        "backend": "tensorrt",
        "precision": "int8",
        "input_size": 16,
        "connection": {
            "type": "ssh",
            "host": jetson.host,
            "port": jetson.port,
            "user": jetson.user,
            "key_file": str(jetson.key_file),
            "known_hosts": str(jetson.known_hosts),
            "workdir": str(jetson.folder / "work"),
            "python": sys.executable,
        },
        "runtime": {"warmup": 5, "min_warmup_s": 0.2, "iterations": 30, "min_seconds": 1.0},
        "power": {"sensor": "tegrastats", "interval_ms": 50, "idle_s": 0.5},
    }
    target = tmp_path / "t.yaml"
    target.write_text(yaml.safe_dump(spec))
    run_dir = bench_run(str(target), art.dir, out=tmp_path / "runs", progress=False)
    node = RunRecord.load(run_dir / "record.json").node("bench")
    assert node.tools == {"tensorrt": "8.5.2"} and node.metrics["latency_ms"]["n"] >= 30
    assert node.extra["guard"]["checked"]  # the engine's output matches the staged ONNX in ORT on the host
    assert node.metrics["energy_mj_per_inference"] > 0
    assert Path(run_dir / "report.md").is_file()
