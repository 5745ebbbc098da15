"""`edgekit bench` end to end on a simulated Jetson reached over SSH, with power sampled on the board.

The board is an OpenSSH server (in its own network namespace when this host allows it) whose PATH
holds the fake `tegrastats`/`nvpmodel` and whose sysfs root is a fake INA3221 tree; its power is a
RAMP in time, so energy from a misaligned clock or window, or a trace integrated past its ends, is
wrong by far more than the tolerance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from edgekit.backends.contract.base import BuildOptions
from edgekit.bench_run import bench_run
from edgekit.core.errors import ConfigError, DeviceError, HostKeyError
from edgekit.core.registry import get_backend
from edgekit.report.record import RunRecord
from tests.device.fakeboard.fakeboard import load_ramp, make_fakeboard, start_sysfs_writer, true_energy_j
from tests.device.sshbed import SKIP_NO_SSHD, SshServer, netns_available, sshd_available
from tests.device.test_agent import _tiny_onnx

pytest.importorskip("paramiko", reason="paramiko not installed (pip install 'edgekit[ssh]')")
pytestmark = pytest.mark.skipif(not sshd_available(), reason=SKIP_NO_SSHD)

W0, SLOPE = 6.0, 1.5  # the board's power: 6 W now, +1.5 W every second


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jetson")
    env = make_fakeboard(folder, W0, SLOPE)
    srv = SshServer(
        folder / "ssh",
        netns=netns_available(),
        path_prefix=str(folder / "bin"),
        env={"EDGEKIT_FAKEBOARD": env["EDGEKIT_FAKEBOARD"], "EDGEKIT_SYSFS_ROOT": env["EDGEKIT_SYSFS_ROOT"]},
    )
    srv.start()
    writer = start_sysfs_writer(folder, 0.005)
    srv.writer = writer  # what the INA3221 files really held, for the energy truth
    yield srv, folder
    writer.stop()
    srv.close()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("art")
    opts = BuildOptions(precision="fp32", threads=1)
    return get_backend("onnxruntime").build(_tiny_onnx(work / "tiny.onnx"), opts, work / "art").dir


def _target(tmp_path: Path, srv: SshServer, sensor: str, **conn) -> Path:
    spec = {
        "name": "sim-jetson",
        "description": "a simulated Jetson over SSH",
        "board": "jetson-xavier-nx",
        "backend": "onnxruntime",
        "precision": "fp32",
        "input_size": 16,
        "connection": {
            "type": "ssh",
            "host": srv.host,
            "port": srv.port,
            "user": srv.user,
            "key_file": str(srv.key_file),
            "known_hosts": str(srv.known_hosts),
            "workdir": str(srv.folder / "work"),
            "python": sys.executable,
            "connect_timeout": 3,
            "retries": 1,
            **conn,
        },
        "runtime": {"threads": 1, "warmup": 5, "min_warmup_s": 0.2, "iterations": 50, "min_seconds": 2.0},
        "power": {"sensor": sensor, "interval_ms": 50, "idle_s": 1.0},
    }
    path = tmp_path / f"{sensor}.yaml"
    path.write_text(yaml.safe_dump(spec))
    (srv.folder / "work").mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("sensor", ["tegrastats", "ina3221"])
def test_bench_over_ssh_measures_the_boards_energy_on_the_boards_clock(board, artifact, tmp_path, sensor):
    srv, folder = board
    run_dir = bench_run(str(_target(tmp_path, srv, sensor)), artifact, out=tmp_path / "runs", progress=False)
    for name in ("record.json", "summary.json", "report.md", "report.html"):
        assert (run_dir / name).is_file()
    node = RunRecord.load(run_dir / "record.json").node("bench")
    window, n = node.extra["window"], node.metrics["latency_ms"]["n"]
    t0, t1 = window["t0"], window["t1"]
    # tegrastats computes the ramp when it prints; the INA3221 files hold what the writer thread last wrote
    truth_j = srv.writer.energy_j(t0, t1) if sensor == "ina3221" else true_energy_j(load_ramp(folder), t0, t1)
    assert node.metrics["energy_mj_per_inference"] == pytest.approx(truth_j * 1e3 / n, rel=0.02)
    assert node.metrics["power_w"] == pytest.approx(truth_j / (t1 - t0), rel=0.02)
    # the idle baseline was taken before the window on the ramp: lower than the window's mean
    assert node.metrics["idle_w"] < node.metrics["power_w"]
    assert node.metrics["energy_dynamic_mj_per_inference"] < node.metrics["energy_mj_per_inference"]
    assert "VDD_IN" in node.extra["power_note"]
    assert node.extra["state_before"]["model"] == "NVIDIA Jetson Xavier NX Developer Kit"
    assert node.config["device_state"]["nvpmodel"] == "MODE_15W_6CORE"
    assert node.extra["guard"]["checked"] and node.extra["guard"]["cosine"] > 0.9999
    assert node.config["device"].startswith("ssh://")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["energy_mj_per_inference"] == node.metrics["energy_mj_per_inference"]
    assert "mJ" in (run_dir / "report.md").read_text()
    assert not srv.processes("power_sample.py") and not srv.processes("ort_run.py")


def test_a_board_without_a_sensor_reports_not_measured_never_zero(board, artifact, tmp_path):
    srv, _ = board
    run_dir = bench_run(str(_target(tmp_path, srv, "none")), artifact, out=tmp_path / "runs", progress=False)
    node = RunRecord.load(run_dir / "record.json").node("bench")
    assert "power_w" not in node.metrics and "energy_mj_per_inference" not in node.metrics
    assert "not measured" in node.extra["power_note"]
    assert json.loads((run_dir / "summary.json").read_text())["power_w"] is None


def test_a_missing_sensor_tool_is_not_measured_with_its_reason(board, artifact, tmp_path):
    srv, _ = board
    target = _target(tmp_path, srv, "rpi")  # this "board" is a Jetson: no vcgencmd pmic rails
    from tests.device.fakeboard import fakeboard

    (Path(srv.path_prefix) / "vcgencmd").rename(Path(srv.path_prefix) / "vcgencmd.off")
    try:
        run_dir = bench_run(str(target), artifact, out=tmp_path / "runs", progress=False)
    finally:
        (Path(srv.path_prefix) / "vcgencmd.off").rename(Path(srv.path_prefix) / "vcgencmd")
    node = RunRecord.load(run_dir / "record.json").node("bench")
    assert "energy_mj_per_inference" not in node.metrics
    assert node.extra["power_note"].startswith("not measured") and "vcgencmd" in node.extra["power_note"]
    del fakeboard


def test_an_artifact_for_another_backend_is_refused_naming_both(board, artifact, tmp_path):
    srv, _ = board
    target = _target(tmp_path, srv, "none")
    spec = yaml.safe_load(target.read_text())
    spec["backend"] = "ncnn"
    spec["precision"] = "fp32"
    target.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="built for backend onnxruntime.*runs ncnn"):
        bench_run(str(target), artifact, out=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_fault_leaves_no_run_folder_and_nothing_running(board, artifact, tmp_path):
    srv, _ = board
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError):
        bench_run(
            str(_target(tmp_path, srv, "tegrastats", known_hosts=str(empty))), artifact, out=tmp_path / "r"
        )
    target = _target(tmp_path, srv, "tegrastats", workdir=str(tmp_path / "no such folder"))
    with pytest.raises(DeviceError, match="work folder"):
        bench_run(str(target), artifact, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())
    assert not srv.processes("power_sample.py")
