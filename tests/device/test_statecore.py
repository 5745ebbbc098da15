"""statecore: the tool outputs (nvpmodel, get_throttled, jetson_clocks, L4T release), the platform snapshot
on fake sysfs trees and the fake Xavier NX, and the throttling verdict from two snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.runners import statecore
from tests.device.fakeboard.fakeboard import make_fakeboard

STATECORE = Path(statecore.__file__)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- tool outputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
        ("NV Power Mode: MODE_15W_6CORE\n2", {"name": "MODE_15W_6CORE", "id": 2}),
        ("NV Power Mode: 15W\n0\n", {"name": "15W", "id": 0}),
        ("NV Power Mode: MAXN\n", {"name": "MAXN", "id": None}),
    ],
)
def test_nvpmodel_query(text, want):
    assert statecore.parse_nvpmodel_q(text) == want


def test_nvpmodel_query_rejects_other_text():
    with pytest.raises(ValueError, match="NV Power Mode"):
        statecore.parse_nvpmodel_q("NVPM ERROR: failed to read PARAM CPU_ONLINE\n")


@pytest.mark.parametrize(
    ("text", "raw", "now", "since_boot"),
    [
        ("throttled=0x0\n", 0, [], []),
        ("throttled=0x50005", 0x50005, ["under-voltage", "throttled"], ["under-voltage", "throttled"]),
        ("throttled=0x80008", 0x80008, ["soft temperature limit"], ["soft temperature limit"]),
        ("throttled=0x20000", 0x20000, [], ["arm frequency capped"]),
        (
            "throttled=0xe0002",
            0xE0002,
            ["arm frequency capped"],
            ["arm frequency capped", "throttled", "soft temperature limit"],
        ),  # fmt: skip
    ],
)
def test_get_throttled_bits(text, raw, now, since_boot):
    assert statecore.parse_get_throttled(text) == {"raw": raw, "now": now, "since_boot": since_boot}


def test_get_throttled_rejects_other_text():
    with pytest.raises(ValueError, match="throttled="):
        statecore.parse_get_throttled("VCHI initialization failed")


JETSON_CLOCKS_TX2 = """SOC family:tegra186  Machine:quill
Online CPUs: 0,3-5
CPU Cluster Switching: Disabled
cpu0: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=2035200 IdleStates: C1=1 c7=1
cpu1: Online=0 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1113600 IdleStates: C1=1 c6=1 c7=1
[cpu2..cpu5 lines omitted here]
GPU MinFreq=114750000 MaxFreq=1134750000 CurrentFreq=114750000
EMC MinFreq=40800000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0
Fan: speed=0
NV Power Mode: MAXP_CORE_ARM
"""  # noqa: E501


def test_jetson_clocks_show_tx2():
    got = statecore.parse_jetson_clocks_show(JETSON_CLOCKS_TX2)
    assert got["cpus"] == {
        "cpu0": {"online": True, "governor": "schedutil", "min_khz": 345600, "max_khz": 2035200,
                 "cur_khz": 2035200},
        "cpu1": {"online": False, "governor": "schedutil", "min_khz": 345600, "max_khz": 2035200,
                 "cur_khz": 1113600},
    }  # fmt: skip
    assert got["gpu"] == {"min_hz": 114750000, "max_hz": 1134750000, "cur_hz": 114750000}
    assert got["emc"] == {"min_hz": 40800000, "max_hz": 1600000000, "cur_hz": 1600000000}
    assert got["nv_power_mode"] == "MAXP_CORE_ARM"


def test_jetson_clocks_show_orin_variants():
    text = (
        "Online CPUs: 0-5, Offline CPUs: \n"
        "cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1\n"  # noqa: E501
        "cpu1: Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=1\n"
        "Active GPU TPCs: 4\nFAN Dynamic Speed Control=kernel hwmon0_pwm1=88\n"
    )  # fmt: skip
    got = statecore.parse_jetson_clocks_show(text)
    assert got["cpus"]["cpu0"]["online"] is True and got["cpus"]["cpu0"]["cur_khz"] == 2201600
    assert "online" not in got["cpus"]["cpu1"] and got["cpus"]["cpu1"]["max_khz"] == 1510400
    assert "gpu" not in got and "nv_power_mode" not in got


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug",
            "R35.4.1",
        ),
        (
            "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\nINSTALL_TYPE=",
            "R32.7.1",
        ),
        ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64", "R36.4.0"),
    ],
)
def test_l4t_release(text, want):
    assert statecore.parse_l4t_release(text) == want


def test_l4t_release_rejects_other_text():
    with pytest.raises(ValueError, match="REVISION"):
        statecore.parse_l4t_release("Raspberry Pi OS")


# -- device state ------------------------------------------------------------------------------------------


def fake_run(outputs: dict[str, str]):
    calls = []

    def run(argv):
        calls.append(argv)
        return outputs.get(argv[0])

    run.calls = calls
    return run


def test_device_state_of_the_fake_xavier_nx(tmp_path):
    env = make_fakeboard(tmp_path, w0=5.0, slope=0.0)
    run = fake_run({"nvpmodel": "NV Power Mode: MODE_15W_6CORE\n2\n"})
    state = statecore.device_state(env["EDGEKIT_SYSFS_ROOT"], run)
    assert state["model"] == "NVIDIA Jetson Xavier NX Developer Kit"
    assert state["l4t"] == "R35.4.1"
    assert state["nvpmodel"] == {"name": "MODE_15W_6CORE", "id": 2}
    assert list(state["cpus"]) == [f"cpu{i}" for i in range(6)]
    assert state["cpus"]["cpu5"] == {"governor": "schedutil", "cur_khz": 1190400, "min_khz": 115200,
                                     "max_khz": 1420800}  # fmt: skip
    assert state["devfreq"] == {"17000000.gv11b": {"cur_hz": 114750000, "max_hz": 1109250000,
                                                   "governor": "nvhost_podgov"}}  # fmt: skip
    assert state["thermal"] == {"cpu-thermal": 45.5}
    assert "throttled" not in state  # vcgencmd absent: omitted, not invented
    assert ["vcgencmd", "get_throttled"] in run.calls


def test_device_state_omits_what_the_board_lacks(tmp_path):
    assert set(statecore.device_state(str(tmp_path), fake_run({}))) == {"t"}


def test_device_state_pi_style_tree(tmp_path):
    write(tmp_path / "sys/firmware/devicetree/base/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    write(tmp_path / "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "48300\n")
    write(tmp_path / "sys/class/thermal/thermal_zone1/type", "cpu-thermal\n")
    write(tmp_path / "sys/class/thermal/thermal_zone1/temp", "49000\n")
    write(tmp_path / "sys/class/thermal/thermal_zone2/type", "CV0-therm\n")
    write(tmp_path / "sys/class/thermal/thermal_zone2/temp", "-256000\n")  # offline zone
    write(tmp_path / "sys/class/devfreq/dmc/cur_freq", "2112000000\n")
    write(tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "ondemand\n")
    state = statecore.device_state(str(tmp_path), fake_run({"vcgencmd": "throttled=0x50000\n"}))
    assert state["model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert state["thermal"] == {"cpu-thermal": 48.3, "cpu-thermal#1": 49.0}
    assert state["devfreq"] == {"dmc": {"cur_hz": 2112000000}}
    assert state["cpus"] == {"cpu0": {"governor": "ondemand"}}
    assert state["throttled"]["since_boot"] == ["under-voltage", "throttled"]
    assert "l4t" not in state and "nvpmodel" not in state


def test_statecore_state_command_on_the_fakeboard(tmp_path):
    env = {**os.environ, **make_fakeboard(tmp_path, w0=5.0, slope=0.0)}
    out = subprocess.run(
        [sys.executable, str(STATECORE), "state"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    state = json.loads(out.stdout)
    assert state["model"] == "NVIDIA Jetson Xavier NX Developer Kit"
    assert state["nvpmodel"] == {"name": "MODE_15W_6CORE", "id": 2}  # the fake bin/nvpmodel on PATH
    assert state["throttled"] == {"raw": 0, "now": [], "since_boot": []}  # the fake bin/vcgencmd


# -- throttle flags -----------------------------------------------------------------------------------------


def snapshot(cpu_khz=1420800, gpu_hz=1109250000, temp=45.0, throttled=None):
    state = {
        "cpus": {"cpu0": {"cur_khz": cpu_khz, "max_khz": 1420800}},
        "devfreq": {"17000000.gv11b": {"cur_hz": gpu_hz, "max_hz": 1109250000}},
        "thermal": {"cpu-thermal": temp},
    }
    if throttled is not None:
        state["throttled"] = statecore.parse_get_throttled(f"throttled={throttled}")
    return state


STEADY = [10.0] * 100


def test_no_flags_when_nothing_changed():
    assert statecore.throttle_flags(snapshot(), snapshot(cpu_khz=1400000, temp=54.0), STEADY) == []
    assert statecore.throttle_flags({}, {}, []) == []


def test_clock_drops_are_flagged():
    flags = statecore.throttle_flags(snapshot(), snapshot(cpu_khz=1190400, gpu_hz=905250000), STEADY)
    assert flags == [
        "cpu0 cur clock fell 16% (1421 -> 1190 MHz)",
        "17000000.gv11b cur clock fell 18% (1109 -> 905 MHz)",
    ]


def test_temperature_rise_and_hot_zone_are_flagged():
    assert statecore.throttle_flags(snapshot(temp=45.0), snapshot(temp=56.5), STEADY) == [
        "cpu-thermal rose 11.5 °C (45.0 -> 56.5 °C)"
    ]
    assert statecore.throttle_flags(snapshot(temp=80.0), snapshot(temp=86.0), STEADY) == [
        "cpu-thermal reached 86.0 °C (> 85 °C)"
    ]


def test_pi_throttle_bits_active_or_newly_set():
    flags = statecore.throttle_flags(snapshot(throttled="0x0"), snapshot(throttled="0x40004"), STEADY)
    assert flags == [
        "Pi firmware reports now: throttled",
        "Pi firmware: newly occurred during the run: throttled",
    ]
    # Under-voltage that happened before the run is not this run's doing.
    assert (
        statecore.throttle_flags(snapshot(throttled="0x10000"), snapshot(throttled="0x10000"), STEADY) == []
    )


def test_latency_drift_is_flagged_above_five_percent():
    slowing = [10.0] * 50 + [10.6] * 50
    assert statecore.throttle_flags({}, {}, slowing) == [
        "latency drift: median of the last 10% is 6.0% slower than the first 10% (10.000 -> 10.600 ms)"
    ]
    assert statecore.throttle_flags({}, {}, [10.0] * 50 + [10.4] * 50) == []
    assert statecore.throttle_flags({}, {}, [1.0] * 5 + [9.0] * 4) == []  # < 10 latencies: no tenths
