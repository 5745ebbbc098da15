"""power_sample.py run for real against the simulated Xavier NX: each sensor, each way to stop, each error.

The fakeboard's power is a known ramp on the shared monotonic clock, so what the sampler logged is
compared with the ramp at the logged instants (and the energy with the exact integral).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.runners import power_sample, powercore
from tests.device.fakeboard.fakeboard import (
    load_ramp,
    make_fakeboard,
    ramp_w,
    remove_tool,
    start_sysfs_writer,
)

POWER_SAMPLE = Path(power_sample.__file__)
W0, SLOPE = 5.0, 2.0  # W, W/s: ~1.5 s of sampling spans a 60 % rise


@pytest.fixture
def board(tmp_path):
    """(folder, env) of a fresh fakeboard; the env is what a sampler subprocess runs with."""
    env = {**os.environ, **make_fakeboard(tmp_path, W0, SLOPE)}
    env.pop("EDGEKIT_TEGRASTATS", None)
    return tmp_path, env


def start(env: dict, out: Path, *args: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    argv = [sys.executable, str(POWER_SAMPLE), "--out", str(out), *args]
    return subprocess.Popen(
        argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def read_log(out: Path) -> tuple[dict, list[dict]]:
    """Header and samples; every line must be whole JSON ending in a newline."""
    text = out.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    return lines[0], lines[1:]


def wait_for_samples(out: Path, n: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if out.is_file() and out.read_text().count("\n") > n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} samples in {out} after {timeout} s")


def fake_tegrastats_pids(folder: Path) -> list[int]:
    """Live processes running this board's fake tegrastats."""
    needle = str(folder / "bin" / "tegrastats").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids


def assert_follows_ramp(folder: Path, samples: list[dict], per_sample: float = 0.05) -> None:
    ramp = load_ramp(folder)
    ts = [s["t"] for s in samples]
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False)), "stamps must increase"
    expected = [ramp_w(ramp, t) for t in ts]
    for s, want in zip(samples, expected, strict=True):
        assert s["w"] == pytest.approx(want, rel=per_sample)
    assert statistics.mean(s["w"] for s in samples) == pytest.approx(statistics.mean(expected), rel=0.02)


# -- sensors ---------------------------------------------------------------------------------------------


def test_tegrastats_samples_follow_the_ramp_and_max_seconds_stops_it(board):
    folder, env = board
    out = folder / "tegrastats.jsonl"
    t_start = time.monotonic()
    rc, err = finish(
        start(env, out, "--sensor", "tegrastats", "--interval-ms", "100", "--max-seconds", "1.5")
    )
    elapsed = time.monotonic() - t_start
    assert rc == 0, err
    assert "stopped (max-seconds)" in err
    assert elapsed < 4.0
    header, samples = read_log(out)
    assert header["sensor"] == "tegrastats" and header["interval_ms"] == 100
    assert header["clock"] == "monotonic" and isinstance(header["pid"], int)
    assert header["scope"] == "VDD_IN (module input; carrier and USB not included)"
    assert len(samples) >= 9
    assert_follows_ramp(folder, samples)
    for s in samples:  # the total is VDD_IN alone, the sub-rails are inside it
        assert set(s["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
        assert s["w"] == pytest.approx(s["rails"]["VDD_IN"] / 1000)
    assert samples[-1]["t"] - t_start < 1.5 + 0.5  # nothing after the deadline
    assert fake_tegrastats_pids(folder) == []


def test_lines_queued_while_the_sampler_was_stopped_keep_their_own_instants(board):
    """A descheduled sampler reads several tegrastats lines at once; each keeps the instant it was printed."""
    folder, env = board
    out = folder / "tegrastats.jsonl"
    proc = start(env, out, "--sensor", "tegrastats", "--interval-ms", "100", "--max-seconds", "2.5")
    wait_for_samples(out, 3)
    os.kill(proc.pid, signal.SIGSTOP)  # ~5 lines queue in the pipe meanwhile
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGCONT)
    rc, err = finish(proc)
    assert rc == 0, err
    _, samples = read_log(out)
    gaps = [b["t"] - a["t"] for a, b in zip(samples, samples[1:], strict=False)]
    assert max(gaps) < 0.3, gaps  # one stamp for the whole burst would leave a ~0.6 s hole before it
    assert_follows_ramp(folder, samples)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_sampler_and_its_tegrastats_child(board, sig):
    folder, env = board
    env["EDGEKIT_TEGRASTATS"] = str(folder / "bin" / "tegrastats")
    env["PATH"] = os.environ.get("PATH", "")  # found through EDGEKIT_TEGRASTATS, not PATH
    out = folder / "term.jsonl"
    proc = start(env, out, "--sensor", "tegrastats", "--interval-ms", "50", "--max-seconds", "60")
    wait_for_samples(out, 5)
    assert fake_tegrastats_pids(folder), "the child should be running"
    proc.send_signal(sig)
    rc, err = finish(proc, timeout=5)
    assert rc == 0, err
    assert f"stopped ({sig.name})" in err
    _, samples = read_log(out)
    assert len(samples) >= 5
    assert fake_tegrastats_pids(folder) == []


def test_a_killed_sampler_leaves_whole_lines_and_its_child_ends_on_the_broken_pipe(board):
    folder, env = board
    out = folder / "kill.jsonl"
    proc = start(env, out, "--sensor", "tegrastats", "--interval-ms", "20", "--max-seconds", "60")
    wait_for_samples(out, 5)
    proc.kill()
    finish(proc)
    _, samples = read_log(out)
    assert len(samples) >= 5
    end = time.monotonic() + 3
    while fake_tegrastats_pids(folder) and time.monotonic() < end:
        time.sleep(0.02)
    assert fake_tegrastats_pids(folder) == []


def test_ina3221_sysfs_samples_follow_the_ramp_and_give_the_energy(board):
    folder, env = board
    out = folder / "ina.jsonl"
    with start_sysfs_writer(folder, 0.005) as writer:
        rc, err = finish(
            start(env, out, "--sensor", "ina3221", "--interval-ms", "20", "--max-seconds", "1.5")
        )
    assert rc == 0, err
    header, samples = read_log(out)
    assert header["sensor"] == "ina3221"
    assert header["scope"].startswith("VDD_IN (module input")
    assert len(samples) >= 20  # 75 at 20 ms; a loaded host stretches the period
    # each sample against what the files held at its stamp (the writer thread lags the ramp under load)
    for s in samples:
        assert s["w"] == pytest.approx(writer.held_w(s["t"]), rel=0.05)
    assert samples[-1]["w"] > samples[0]["w"] * 1.2  # it follows the ramp (~60 % rise over 1.5 s)
    trace = [(s["t"], s["w"]) for s in samples]
    t0, t1 = trace[0][0], trace[-1][0]
    trapezoid_j = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(trace, trace[1:], strict=False))
    assert trapezoid_j == pytest.approx(writer.energy_j(t0, t1), rel=0.02)
    assert powercore.read_power_log(out.read_text())[1] == trace


def test_rpi_pmic_samples_follow_the_ramp(board):
    folder, env = board
    out = folder / "rpi.jsonl"
    rc, err = finish(start(env, out, "--sensor", "rpi", "--interval-ms", "100", "--max-seconds", "1.5"))
    assert rc == 0, err
    header, samples = read_log(out)
    assert header["scope"] == powercore.PMIC_SCOPE
    assert len(samples) >= 8
    assert len(samples[0]["rails"]) == 12 and "EXT5V" not in samples[0]["rails"]
    assert_follows_ramp(folder, samples)


def test_rails_option_sums_exactly_those_rails(board):
    folder, env = board
    out = folder / "rails.jsonl"
    args = (
        "--sensor",
        "ina3221",
        "--interval-ms",
        "20",
        "--max-seconds",
        "0.5",
        "--rails",
        "VDD_SOC,VDD_CPU_GPU_CV",
    )
    rc, err = finish(start(env, out, *args))
    assert rc == 0, err
    header, samples = read_log(out)
    assert header["scope"].startswith("VDD_SOC + VDD_CPU_GPU_CV (rails asked for")
    for s in samples:
        assert s["w"] == pytest.approx((s["rails"]["VDD_SOC"] + s["rails"]["VDD_CPU_GPU_CV"]) / 1000)
        assert s["w"] == pytest.approx(0.55 * W0, rel=0.01)  # 25 % + 30 % of VDD_IN, no writer: still w0


def test_stdin_eof_stops_it_with_watch_stdin(board):
    folder, env = board
    out = folder / "stdin.jsonl"
    args = ("--sensor", "ina3221", "--interval-ms", "50", "--max-seconds", "60", "--watch-stdin")
    proc = start(env, out, *args, stdin=subprocess.PIPE)
    wait_for_samples(out, 3)
    closed = time.monotonic()
    proc.stdin.close()
    proc.stdin = None  # closed by hand: communicate() must not flush it
    rc, err = finish(proc, timeout=5)
    assert rc == 0, err
    assert "stopped (stdin closed)" in err
    assert time.monotonic() - closed < 2.0
    read_log(out)


# -- errors: one line, exit 2 -------------------------------------------------------------------------------


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("power_sample: error: ")
    return lines[0]


def test_missing_tegrastats(board, tmp_path):
    folder, env = board
    env["PATH"] = os.environ.get("PATH", "")
    rc, err = finish(start(env, folder / "x.jsonl", "--sensor", "tegrastats", "--max-seconds", "5"))
    assert rc == 2
    line = error_line(err)
    assert "tegrastats not found" in line and "EDGEKIT_TEGRASTATS" in line and "--sensor ina3221" in line
    env["EDGEKIT_TEGRASTATS"] = str(tmp_path / "nope" / "tegrastats")
    rc, err = finish(start(env, folder / "x.jsonl", "--sensor", "tegrastats", "--max-seconds", "5"))
    assert rc == 2 and "tegrastats not found" in error_line(err)


def test_tegrastats_without_rails_asks_for_sudo_nopasswd(board):
    folder, env = board
    env["EDGEKIT_FAKEBOARD_NOROOT"] = "1"
    out = folder / "noroot.jsonl"
    rc, err = finish(start(env, out, "--sensor", "tegrastats", "--interval-ms", "50", "--max-seconds", "10"))
    assert rc == 2
    line = error_line(err)
    assert "no power rails" in line and "sudo -n tegrastats" in line and "NOPASSWD" in line
    assert not out.exists() or out.read_text() == ""
    assert fake_tegrastats_pids(folder) == []


def test_missing_vcgencmd_and_missing_ina3221(board, tmp_path):
    folder, env = board
    remove_tool(folder, "vcgencmd")
    rc, err = finish(start(env, folder / "x.jsonl", "--sensor", "rpi", "--max-seconds", "5"))
    assert rc == 2 and "vcgencmd not found" in error_line(err)
    env["EDGEKIT_SYSFS_ROOT"] = str(tmp_path / "empty-root")
    rc, err = finish(start(env, folder / "x.jsonl", "--sensor", "ina3221", "--max-seconds", "5"))
    assert rc == 2
    assert "no INA3221 rails" in error_line(err) and "--sensor tegrastats" in err


def test_unknown_sensor_and_unknown_rail(board):
    folder, env = board
    rc, err = finish(start(env, folder / "x.jsonl", "--sensor", "wattmeter"))
    assert rc == 2
    assert "invalid choice: 'wattmeter'" in error_line(err)
    rc, err = finish(
        start(env, folder / "y.jsonl", "--sensor", "ina3221", "--rails", "VDD_GPU", "--max-seconds", "5")
    )
    assert rc == 2
    line = error_line(err)
    assert "VDD_GPU not reported" in line and "VDD_IN, VDD_CPU_GPU_CV, VDD_SOC" in line and "--rails" in line
