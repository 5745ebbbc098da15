"""Emulated ARM boards (issue 44): arm64 Debian under qemu as a Cortex-A72 (Pi 4) and -A76 (RK3588), over SSH.

The root file system is built by `make test` (`edgekit board sim build`, about 6 minutes once, then cached);
where this host cannot emulate (not root, no binfmt_misc, no namespaces) the tests skip and say why.
"""

from __future__ import annotations

import subprocess

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
    if sim.running() and _started_elsewhere(sim):
        pytest.skip(
            reason="the rpi4 simulator was running before these tests (someone's bench): not stopping it"
        )
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

    from edgekit.pipeline import DeployRequest, deploy
    from edgekit.report.record import RunRecord
    from tests.conftest import TRAIN_SCALE

    run = deploy(
        DeployRequest(
            target="rpi4-ncnn",
            device="sim",
            recipe="none",
            data=str(shapes_root),
            epochs_scale=TRAIN_SCALE,
            out=tmp_path / "runs",
            calib_root=tmp_path / "calibration",
            progress=False,
            command=["test"],
        )
    )
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
    report = (run / "report.md").read_text()
    assert "emulator time p50" in report and "emulated board" in report


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
    from edgekit.core.errors import DeviceError
    from edgekit.core.registry import get_backend
    from edgekit.device.agent import Agent, BenchPlan
    from edgekit.device.provision import host_versions, prepare_board
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
            Agent(t, python=bare, target="rk3588-mnn").bench(art.dir, plan, progress=False)
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

    from edgekit.core.errors import DeviceError
    from edgekit.device.provision import check_board_runtime, host_versions, probe

    sim = boards["rpi4"]
    with _transport(sim) as t:
        board_pip = probe(t, sim.connection().python, ("pip",))["versions"]["pip"]
        host_pip = host_versions(("pip",))["pip"]
        if board_pip == host_pip:
            pytest.skip(reason=f"the board's pip and this host's are both {host_pip}: no skew to show")
        with pytest.raises(DeviceError, match="version skew") as err:
            check_board_runtime(
                t, sim.connection().python, SimpleNamespace(board_packages=("pip",)), "rpi4-ncnn"
            )
    assert f"pip {board_pip}" in err.value.message and f"pip {host_pip}" in err.value.message
    assert "edgekit board prepare rpi4-ncnn --device sim" in err.value.hint
