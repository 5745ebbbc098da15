"""Emulated ARM boards (issue 44): arm64 Debian under qemu as a Cortex-A72 (Pi 4) and -A76 (RK3588), over SSH.

The root file system is built by `make test` (`edgekit board sim build`, about 6 minutes once, then cached);
where this host cannot emulate (not root, no binfmt_misc, no namespaces) the tests skip and say why.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.sim.profiles import PROFILES, profile
from edgekit.runners.runcore import _cpuinfo_flags, int8_dot

pytest.importorskip("paramiko", reason="paramiko not installed (pip install 'edgekit[ssh]')")


def test_each_profile_writes_a_cpuinfo_the_runner_reads_as_that_core():
    for name, core, dot in (("rpi4", "Cortex-A72", "neon"), ("rk3588", "Cortex-A76", "sdot")):
        flags, model = _cpuinfo_flags(PROFILES[name].cpuinfo())
        assert model == core
        assert int8_dot("aarch64", sorted(flags)) == dot
    assert "asimdhp" in PROFILES["rk3588"].features and "asimdhp" not in PROFILES["rpi4"].features


def test_a_board_without_a_simulator_is_one_error_naming_the_ones_there_are():
    from edgekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no board simulator for 'jetson-xavier-nx'") as err:
        profile("jetson-xavier-nx")
    assert "--board" in err.value.hint and "rpi4" in err.value.hint


def _why_not() -> str | None:
    from edgekit.device.sim.rootfs import rootfs_path, unavailable

    reason = unavailable()
    if reason:
        return reason
    if not (rootfs_path() / ".edgekit-complete").is_file():
        return (
            f"the board root file system is not built ({rootfs_path()}): `edgekit board sim build` makes it"
        )
    return None


WHY_NOT = _why_not()
needs_sim = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@pytest.fixture(scope="module")
def boards():
    from edgekit.device.sim.board import BoardSim

    sims = {name: BoardSim(name) for name in PROFILES}
    _OURS.update(name for name, sim in sims.items() if not sim.running())  # someone else's board stays up
    for sim in sims.values():
        sim.start(say=lambda _: None)
    yield sims
    for name in sorted(_OURS):
        sims[name].stop()


#: The simulators these tests started (and so may stop).
_OURS: set[str] = set()


def _started_elsewhere(sim) -> bool:
    return sim.profile.name not in _OURS


def _transport(sim):
    from edgekit.core.config import SSHConnection
    from edgekit.device.ssh import SSHTransport

    return SSHTransport.from_connection(SSHConnection(**sim.connection().to_connection()))


@needs_sim
@pytest.mark.parametrize("name", list(PROFILES))
def test_the_board_is_an_arm_core_of_its_model_with_its_own_processes(boards, name):
    from edgekit.device.cpuprobe import probe_cpu

    sim = boards[name]
    with _transport(sim) as t:
        script = (
            "import platform, sys; sys.path.insert(0, '.');"
            "import onnxruntime, ncnn, MNN, numpy; print(platform.machine(), onnxruntime.__version__)"
        )
        uname = t.run([sim.connection().python, "-c", script], timeout=300)
        assert uname.ok, uname.tail()
        assert uname.stdout.split()[0] == "aarch64"
        cpuinfo = t.run(["cat", "/proc/cpuinfo"]).stdout
        flags, model = _cpuinfo_flags(cpuinfo)
        assert model == {"rpi4": "Cortex-A72", "rk3588": "Cortex-A76"}[name]
        assert t.run(["sh", "-c", "echo $QEMU_CPU"]).stdout.strip() == sim.profile.cpu
        listed = t.run(["ps", "-e", "-o", "pid=,args="]).stdout.splitlines()
        probed = probe_cpu(t)  # what `cpu: {features: probe}` reads: the core's own, not the host's
    assert probed["arch"] == "aarch64" and set(probed["features"]) <= set(sim.profile.features)
    assert ("asimddp" in probed["features"]) == (name == "rk3588")
    assert probed["int8_dot"] == {"rpi4": "neon", "rk3588": "sdot"}[name]
    procs = dict(line.strip().split(None, 1) for line in listed if line.strip())
    # its own process namespace: its init is the board's sshd, and none of the host's processes shows
    assert "/usr/sbin/sshd -D" in procs["1"], procs
    assert not any("pytest" in args or "process_api" in args for args in procs.values()), procs


@needs_sim
def test_the_board_has_its_own_address_and_a_known_host_key(boards):
    from edgekit.core.errors import HostKeyError

    sim = boards["rpi4"]
    with _transport(sim) as t:
        addrs = t.run(["ip", "-br", "addr"]).stdout
    assert sim.profile.address in addrs
    conn = sim.connection()
    wrong = conn.known_hosts + ".wrong"
    other = boards["rk3588"].connection().known_hosts
    with open(other) as src, open(wrong, "w") as dst:  # the other board's key under this board's address
        dst.write(src.read().replace(boards["rk3588"].profile.address, sim.profile.address))
    from edgekit.device.ssh import SSHTransport

    bad = SSHTransport(conn.host, conn.user, key_file=conn.key_file, known_hosts=wrong, retries=1)
    with pytest.raises(HostKeyError):
        bad.run(["true"])


@needs_sim
def test_stop_leaves_nothing_running_and_start_again_works(boards):
    sim = boards["rpi4"]
    _ours_or_skip(sim)
    assert sim.stop()
    assert not sim.running()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert sim.netns not in netns
    left = subprocess.run(["pgrep", "-f", f"sshd_config.edgekit-{sim.profile.name}"], capture_output=True)
    assert left.returncode == 1, left.stdout
    sim.start(say=lambda _: None)
    with _transport(sim) as t:
        assert t.run(["true"]).ok  # the same host key: a restarted simulator is the same board


@needs_sim
@pytest.mark.slow
def test_deploy_on_the_emulated_pi_runs_the_arm_kernels_and_calls_its_time_emulator_time(
    boards, tmp_path, shapes_root, trained
):
    import json

    from edgekit.pipeline import deploy
    from edgekit.report.record import RunRecord
    from tests.test_pipeline import _request

    run = deploy(_request(tmp_path, shapes_root, target="rpi4-ncnn", device="sim", recipe="none"))
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "ok" and s["emulator"] == "qemu-user cortex-a72"
    assert all(v is None for v in s["latency_ms"].values()) and s["fps"] is None  # not board time
    assert s["emulator_time_ms"]["p50"] > 0
    # the board's own ncnn int8 outputs keep the detections (against the host's FP32 reference)
    assert s["deployed"]["map50_95"] >= s["reference"]["map50_95"] - 0.03
    bench = RunRecord.load(run / "record.json").node("bench")
    assert bench.config["emulator"] == "qemu-user cortex-a72"
    cpu = bench.extra["device"]["cpu"]
    assert (cpu["arch"], cpu["model"], cpu["int8_dot"]) == ("aarch64", "Cortex-A72", "neon")
    assert bench.extra["guard"]["checked"], bench.extra["guard"]
    probed = RunRecord.load(run / "record.json").target["cpu"]  # read from the board when the run started
    assert probed["source"].startswith("probed on ") and probed["features"] == cpu["features"]
    assert bench.extra["arithmetic"] == "int8 (float layers fp32)"  # edgekit's int8 turns fp16 off
    report = (run / "report.md").read_text()
    assert "emulator time p50" in report and "emulated board" in report
    assert "Cortex-A72, aarch64, int8 path neon" in report


def test_device_sim_refuses_a_latency_gate_and_a_board_it_cannot_emulate():
    from edgekit.core.errors import ConfigError
    from edgekit.pipeline import DeployRequest, make_plan

    with pytest.raises(ConfigError, match="emulator") as err:
        make_plan(DeployRequest(target="rpi4-ncnn", device="sim", max_p99_ms=50.0, command=["test"]))
    assert "--max-p99-ms" in err.value.hint
    with pytest.raises(ConfigError, match="jetson") as err:
        make_plan(DeployRequest(target="jetson-xavier-nx", device="sim", command=["test"]))
    assert "--device local" in err.value.hint


@needs_sim
@pytest.mark.slow
def test_a_board_without_the_runtime_is_refused_then_prepared_offline_then_benched(boards, tmp_path):
    """A board whose Python lacks onnxruntime: one error naming the command; `prepare` installs this
    host's version from wheels pushed over SSH (the board has no network); the bench then runs."""
    from edgekit.backends.contract.base import BuildOptions
    from edgekit.core.config import load_target
    from edgekit.core.errors import DeviceError
    from edgekit.core.registry import get_backend
    from edgekit.device.agent import Agent, BenchPlan
    from edgekit.device.provision import host_versions, prepare_board, prepare_command
    from edgekit.device.sim.target import sim_target
    from tests.device.test_agent import _tiny_onnx

    art = get_backend("onnxruntime").build(
        _tiny_onnx(tmp_path / "tiny.onnx"), BuildOptions(precision="fp32", threads=1), tmp_path / "art"
    )
    sim = boards["rk3588"]
    bare = "/tmp/bare-venv/bin/python"
    x = np.zeros((1, 3, 16, 16), np.float32)
    plan = BenchPlan(bench_input=x, warmup=1, min_warmup_s=0, iterations=3, min_seconds=0, threads=1)
    with _transport(sim) as t:
        assert t.run(["python3", "-m", "venv", "/tmp/bare-venv"], timeout=600).ok
        with pytest.raises(DeviceError, match="has no onnxruntime") as err:
            fix = prepare_command(sim_target(load_target("rk3588-mnn")))
            Agent(t, python=bare, prepare=fix).bench(art.dir, plan, progress=False)
        assert "edgekit board prepare rk3588-mnn --device sim" in err.value.hint
        now = prepare_board(t, bare, ("onnxruntime",), tmp_path / "wheels", say=lambda _: None)
        assert now["onnxruntime"] == host_versions(("onnxruntime",))["onnxruntime"]
        res = Agent(t, python=bare).bench(art.dir, plan, progress=False)
        t.run(["rm", "-rf", "/tmp/bare-venv"])
    assert len(res.latencies_ms) == 3
    assert res.device["packages"]["onnxruntime"] == now["onnxruntime"]


@needs_sim
def test_a_runtime_of_another_version_is_one_error_naming_both_versions(boards):
    """The skew rule on a real package whose versions differ here: the board's venv pip (Debian's) is
    not this host's."""
    from types import SimpleNamespace

    from edgekit.core.config import load_target
    from edgekit.core.errors import DeviceError
    from edgekit.device.provision import check_board_runtime, host_versions, prepare_command, probe
    from edgekit.device.sim.target import sim_target

    sim = boards["rpi4"]
    with _transport(sim) as t:
        board_pip = probe(t, sim.connection().python, ("pip",))["versions"]["pip"]
        host_pip = host_versions(("pip",))["pip"]
        if board_pip == host_pip:
            pytest.skip(reason=f"the board's pip and this host's are both {host_pip}: no skew to show")
        with pytest.raises(DeviceError, match="version skew") as err:
            fix = prepare_command(sim_target(load_target("rpi4-ncnn")))
            check_board_runtime(t, sim.connection().python, SimpleNamespace(board_packages=("pip",)), fix)
    assert f"pip {board_pip}" in err.value.message and f"pip {host_pip}" in err.value.message
    assert "edgekit board prepare rpi4-ncnn --device sim" in err.value.hint


def _tiny_artifact(folder):
    from edgekit.backends.contract.base import BuildOptions
    from edgekit.core.registry import get_backend
    from tests.device.test_agent import _tiny_onnx

    folder.mkdir(parents=True, exist_ok=True)
    opts = BuildOptions(precision="fp32", threads=1)
    return get_backend("onnxruntime").build(_tiny_onnx(folder / "tiny.onnx"), opts, folder / "art").dir


def _ours_or_skip(sim) -> None:
    why = f"the {sim.profile.name} simulator was running before these tests: not disturbing it"
    if _started_elsewhere(sim):
        pytest.skip(reason=why)


def _plan(iterations=3, seconds=0.0, eval_x=None):
    from edgekit.device.agent import BenchPlan

    x = np.zeros((1, 3, 16, 16), np.float32)
    return BenchPlan(
        bench_input=x, eval_inputs=eval_x, warmup=1, min_warmup_s=0, iterations=iterations,
        min_seconds=seconds, threads=1,
    )  # fmt: skip


@needs_sim
@pytest.mark.slow
def test_a_simulator_killed_mid_bench_is_one_error_nothing_runs_and_a_retry_works(boards, tmp_path):
    import threading

    from edgekit.core.errors import DeviceError
    from edgekit.device.agent import Agent

    sim = boards["rpi4"]
    _ours_or_skip(sim)
    art = _tiny_artifact(tmp_path)
    threading.Timer(8.0, sim.stop).start()  # mid-run: the timed loop lasts 120 s
    with _transport(sim) as t, pytest.raises(DeviceError) as err:
        Agent(t).bench(art, _plan(iterations=10, seconds=120.0), progress=False)
    assert (
        "closed" in err.value.message or "lost the link" in err.value.message or "reach" in err.value.message
    )
    assert err.value.hint
    assert not sim.running()
    left = subprocess.run(["pgrep", "-f", "sshd_config.edgekit-rpi4|ort_run.py"], capture_output=True)
    assert left.returncode == 1, left.stdout  # nothing of the board is left on this host
    sim.start(say=lambda _: None)
    with _transport(sim) as t:
        res = Agent(t).bench(art, _plan(), progress=False)
    assert len(res.latencies_ms) == 3


@needs_sim
def test_a_reflashed_board_with_a_new_host_key_is_refused(boards, tmp_path):
    import shutil

    from edgekit.core.errors import HostKeyError

    sim = boards["rk3588"]
    _ours_or_skip(sim)
    key = sim.folder / "host_ed25519"
    saved = tmp_path / "saved"
    saved.mkdir()
    for suffix in ("", ".pub"):
        shutil.copy(f"{key}{suffix}", saved / f"k{suffix}")
    sim.stop()
    try:
        key.unlink()
        Path(f"{key}.pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        sim.start(say=lambda _: None)
        with pytest.raises(HostKeyError, match="CHANGED") as err:
            _transport(sim).run(["true"])
        assert "ssh-keygen -R" in err.value.hint
    finally:
        sim.stop()
        for suffix in ("", ".pub"):
            shutil.copy(saved / f"k{suffix}", f"{key}{suffix}")
        sim.start(say=lambda _: None)
    with _transport(sim) as t:
        assert t.run(["true"]).ok


@needs_sim
def test_a_full_board_disk_is_one_error_nothing_is_left_and_a_retry_works(boards, tmp_path):
    from edgekit.core.errors import DeviceError
    from edgekit.device.agent import Agent

    sim = boards["rk3588"]
    art = _tiny_artifact(tmp_path)
    big = np.zeros((3000, 3, 16, 16), np.float32)  # 9 MB of eval inputs for the 16 px model
    with _transport(sim) as t:
        free_kb = int(t.run(["df", "-k", "--output=avail", "/tmp"]).stdout.split()[-1])
        t.run(["fallocate", "-l", f"{max(free_kb - 2048, 1)}k", "/tmp/filler"])
        try:
            with pytest.raises(DeviceError, match="full|space") as err:
                Agent(t).bench(art, _plan(eval_x=big), progress=False)
            assert err.value.hint
            left = t.run(["sh", "-c", "ls -d /tmp/edgekit-* 2>/dev/null || true"]).stdout.strip()
            assert left == "", left  # the work folder went with the error
        finally:
            t.run(["rm", "-f", "/tmp/filler"])
        res = Agent(t).bench(art, _plan(eval_x=big[:2]), progress=False)
    assert len(res.latencies_ms) == 3


@needs_sim
def test_an_mnn_int8_build_is_checked_on_the_emulated_board_and_the_record_says_so(boards, tmp_path):
    """--check-on: MNN's determinism and FP32/detection checks run with MNN's ARM kernels on the A76."""
    from edgekit.backends.contract.board_check import checks_on
    from edgekit.core.registry import get_backend
    from edgekit.device.sim.target import board_check
    from tests.contract.backend_contract import make_calibration_set, make_tiny_detector_onnx

    pytest.importorskip("MNN", reason="MNN is not installed: pip install 'edgekit[mnn]'")
    onnx_path = make_tiny_detector_onnx(tmp_path / "tiny.onnx")
    calib = make_calibration_set(tmp_path / "calibration")
    options = {"precision": "int8", "threads": 1, "head": "yolov5", "num_classes": 3}
    options["quantizer"] = {"float_head": False}
    backend = get_backend("mnn")
    with checks_on(board_check("rk3588")):
        art = backend.build(onnx_path, options, tmp_path / "art", calib=calib, reference=onnx_path)
    parity = art.meta["parity"]
    assert parity["checked"] and parity["on"] == "rk3588 simulator (qemu-user cortex-a76)"
    assert parity["outputs"][0]["boxes_cosine"] >= 0.99
    host = backend.build(onnx_path, options, tmp_path / "host", calib=calib, reference=onnx_path)
    assert host.meta["parity"]["on"] == "this host"
    if not _started_elsewhere(boards["rk3588"]):  # (someone else's runs make folders there too)
        with _transport(boards["rk3588"]) as t:  # the check's folders went with it
            assert t.run(["sh", "-c", "ls -d /tmp/edgekit-* 2>/dev/null || true"]).stdout.strip() == ""
