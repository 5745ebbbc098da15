"""Emulated ARM boards (issue 44): arm64 Debian under qemu as a Cortex-A72 (Pi 4) and -A76 (RK3588), over SSH.

The root file system is built by `make test` (`edgekit board sim build`, about 6 minutes once, then cached);
where this host cannot emulate (not root, no binfmt_misc, no namespaces) the tests skip and say why.
"""

from __future__ import annotations

import subprocess

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
    for sim in sims.values():
        sim.start(say=lambda _: None)
    yield sims
    for sim in sims.values():
        sim.stop()


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
        procs = t.run(["ps", "-e", "-o", "comm="]).stdout.split()
    # its own process namespace: sshd (its init), the session, ps; none of the host's
    assert "pytest" not in procs and "python" not in " ".join(procs), procs
    assert len(procs) < 12, procs


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
