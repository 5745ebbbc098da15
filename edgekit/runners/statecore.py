"""Device-side platform state (stdlib only: copied to the board beside ``powercore.py``; host imports it).

Formats as in research/device-benchmarking.md §3.5 and §5:

* tool outputs: ``nvpmodel -q``, ``vcgencmd get_throttled``, ``jetson_clocks --show``,
  ``/etc/nv_tegra_release``;
* a before/after platform snapshot (:func:`device_state`, ``python statecore.py state``): board model, L4T,
  power mode, CPU and devfreq clocks and governors, thermal zones, throttling bits;
* the throttling verdict drawn from two snapshots and the latencies (:func:`throttle_flags`).

Every sysfs path is taken under a ``root`` so tests can point it at a fake tree. Nothing here invents a
value: what the board does not expose is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from powercore import TEMP_OFFLINE, run_tool  # noqa: E402

# -- tool outputs ---------------------------------------------------------------------------------------

#: ``vcgencmd get_throttled`` bits (research §3.5): bit -> name; bit + 16 is the same, since boot.
THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}


def parse_nvpmodel_q(text: str) -> dict:
    r"""Parse ``nvpmodel -q``: ``NV Power Mode: <name>`` then the mode id on its own line.

    Args:
        text: The command's output (an ``NVPM WARN`` line before it is fine).

    Returns:
        ``{"name": str, "id": int | None}``.

    Raises:
        ValueError: No ``NV Power Mode:`` line.

    Example:
        >>> parse_nvpmodel_q("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n")
        {'name': 'MAXN', 'id': 0}
    """
    found = re.search(r"NV Power Mode: *(\S+)[^\n]*(?:\n\s*(\d+)\s*$)?", text, re.M)
    if not found:
        raise ValueError("no 'NV Power Mode:' line in nvpmodel output")
    return {"name": found.group(1), "id": int(found.group(2)) if found.group(2) else None}


def parse_get_throttled(text: str) -> dict:
    """Parse ``vcgencmd get_throttled`` (``throttled=0x50005``).

    Args:
        text: The command's output.

    Returns:
        ``{"raw": int, "now": [names of bits 0-3], "since_boot": [names of bits 16-19]}``.

    Raises:
        ValueError: No ``throttled=`` value.

    Example:
        >>> parse_get_throttled("throttled=0x50005")
        {'raw': 327685, 'now': ['under-voltage', 'throttled'], 'since_boot': ['under-voltage', 'throttled']}
    """
    found = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    if not found:
        raise ValueError("no 'throttled=' value in vcgencmd output")
    raw = int(found.group(1), 0)
    return {
        "raw": raw,
        "now": [name for bit, name in THROTTLE_BITS.items() if raw >> bit & 1],
        "since_boot": [name for bit, name in THROTTLE_BITS.items() if raw >> (bit + 16) & 1],
    }


def _freqs(fields: dict[str, str], unit: str) -> dict:
    keys = {"MinFreq": f"min_{unit}", "MaxFreq": f"max_{unit}", "CurrentFreq": f"cur_{unit}"}
    return {keys[k]: int(v) for k, v in fields.items() if k in keys and v.isdigit()}


def parse_jetson_clocks_show(text: str) -> dict:
    r"""Parse ``jetson_clocks --show`` (root only on the board).

    Args:
        text: The command's output.

    Returns:
        ``{"cpus": {cpuN: {"online"?, "governor"?, "min_khz", "max_khz", "cur_khz"}},
        "gpu": {"min_hz", "max_hz", "cur_hz"}, "emc": {...}, "nv_power_mode": str}``; parts the
        output lacks are left out (``online`` is absent on Orin lines without ``Online=``).

    Example:
        >>> s = parse_jetson_clocks_show("cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq="
        ...     "2201600 CurrentFreq=2201600 IdleStates: WFI=1\nGPU MinFreq=1 MaxFreq=9 CurrentFreq=5")
        >>> s["cpus"]["cpu0"]["cur_khz"], s["cpus"]["cpu0"]["online"], s["gpu"]
        (2201600, True, {'min_hz': 1, 'max_hz': 9, 'cur_hz': 5})
    """
    out: dict = {"cpus": {}}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        cpu = re.match(r"\s*(cpu\d+):", line)
        if cpu:
            entry = _freqs(fields, "khz")
            if "Governor" in fields:
                entry["governor"] = fields["Governor"]
            if "Online" in fields:
                entry["online"] = fields["Online"] == "1"
            out["cpus"][cpu.group(1)] = entry
        elif re.match(r"(GPU|EMC) ", line):
            out[line[:3].lower()] = _freqs(fields, "hz")
        elif line.startswith("NV Power Mode:"):
            out["nv_power_mode"] = line.split(":", 1)[1].strip()
    return out


def parse_l4t_release(text: str) -> str:
    """The L4T release in ``/etc/nv_tegra_release``.

    Args:
        text: The file's content.

    Returns:
        ``"R<major>.<revision>"``.

    Raises:
        ValueError: Not an nv_tegra_release text.

    Example:
        >>> parse_l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64")
        'R35.4.1'
    """
    found = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+\d)", text)
    if not found:
        raise ValueError("no '# R<n> (release), REVISION: <x.y>' line")
    return f"R{found.group(1)}.{found.group(2)}"


# -- device state ---------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.lstrip("-").isdigit() else None


def _compact(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _cpufreq(root: Path) -> dict[str, dict]:
    cpus = [p for p in root.glob("sys/devices/system/cpu/cpu*") if p.name[3:].isdigit()]
    out = {}
    for cpu in sorted(cpus, key=lambda p: int(p.name[3:])):
        freq = cpu / "cpufreq"
        entry = _compact({
            "governor": _read(freq / "scaling_governor"),
            "cur_khz": _read_int(freq / "scaling_cur_freq"),
            "min_khz": _read_int(freq / "scaling_min_freq"),
            "max_khz": _read_int(freq / "scaling_max_freq"),
        })  # fmt: skip
        if entry:
            out[cpu.name] = entry
    return out


def _devfreq(root: Path) -> dict[str, dict]:
    """Devfreq nodes (the Jetson iGPU ``17000000.gv11b``, RK3588 ``fb000000.gpu``, ``dmc``...) in Hz."""
    nodes = list(root.glob("sys/devices/gpu.0/devfreq/*/cur_freq")) + list(
        root.glob("sys/class/devfreq/*/cur_freq")
    )
    out = {}
    for cur in nodes:
        node = cur.parent
        entry = _compact({"cur_hz": _read_int(cur), "max_hz": _read_int(node / "max_freq"),
                          "governor": _read(node / "governor")})  # fmt: skip
        if entry.get("cur_hz") is not None:
            out[node.name] = entry
    return dict(sorted(out.items()))


def _thermal(root: Path) -> dict[str, float]:
    zones = [p for p in root.glob("sys/class/thermal/thermal_zone*") if p.name[12:].isdigit()]
    out: dict[str, float] = {}
    for zone in sorted(zones, key=lambda p: int(p.name[12:])):
        name, milli = _read(zone / "type") or zone.name, _read_int(zone / "temp")
        if milli is None or milli / 1000 <= TEMP_OFFLINE:
            continue
        out[name if name not in out else f"{name}#{zone.name[12:]}"] = milli / 1000
    return out


def _parsed(parse: Callable[[str], object], text: str | None) -> object | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError:
        return None


def device_state(root: str = "/", run: Callable[[list[str]], str | None] = run_tool) -> dict:
    """Snapshot the platform state before or after a run (research §5.2, §5.4).

    Args:
        root: Filesystem root for ``/proc``, ``/sys`` and ``/etc`` paths.
        run: Runs an argv, returns its stdout or None (tool missing or failed).

    Returns:
        ``{"t": monotonic s, "model", "l4t", "nvpmodel", "cpus": {cpuN: {"governor", "cur_khz",
        "min_khz", "max_khz"}}, "devfreq": {node: {"cur_hz", "max_hz", "governor"}},
        "thermal": {zone type: °C}, "throttled": parse_get_throttled(...)}``; whatever the board does not
        expose is omitted, never invented.
    """
    base = Path(root)
    model = _read(base / "proc/device-tree/model") or _read(base / "sys/firmware/devicetree/base/model")
    return _compact({
        "t": time.monotonic(),
        "model": model or None,
        "l4t": _parsed(parse_l4t_release, _read(base / "etc/nv_tegra_release")),
        "nvpmodel": _parsed(parse_nvpmodel_q, run(["nvpmodel", "-q"])),
        "cpus": _cpufreq(base) or None,
        "devfreq": _devfreq(base) or None,
        "thermal": _thermal(base) or None,
        "throttled": _parsed(parse_get_throttled, run(["vcgencmd", "get_throttled"])),
    })  # fmt: skip


# -- throttling verdict ---------------------------------------------------------------------------------

CLOCK_DROP = 0.05
TEMP_RISE_C = 10.0
TEMP_HOT_C = 85.0
DRIFT = 0.05


def _clock_flags(before: dict, after: dict, section: str, unit: str, scale: float) -> list[str]:
    flags = []
    for name, now in after.get(section, {}).items():
        then = before.get(section, {}).get(name, {})
        for key in (f"cur_{unit}", f"max_{unit}"):
            old, new = then.get(key), now.get(key)
            if old and new is not None and new < old * (1 - CLOCK_DROP):
                flags.append(
                    f"{name} {key[:3]} clock fell {100 * (1 - new / old):.0f}% "
                    f"({old / scale:.0f} -> {new / scale:.0f} MHz)"
                )
    return flags


def _temp_flags(before: dict, after: dict) -> list[str]:
    flags = []
    for zone, now in after.get("thermal", {}).items():
        then = before.get("thermal", {}).get(zone)
        if then is not None and now - then > TEMP_RISE_C:
            flags.append(f"{zone} rose {now - then:.1f} °C ({then:.1f} -> {now:.1f} °C)")
        if now > TEMP_HOT_C:
            flags.append(f"{zone} reached {now:.1f} °C (> {TEMP_HOT_C:.0f} °C)")
    return flags


def _pi_flags(before: dict, after: dict) -> list[str]:
    now = after.get("throttled")
    if not now:
        return []
    flags = [f"Pi firmware reports now: {', '.join(now['now'])}"] if now["now"] else []
    seen = set(before.get("throttled", {}).get("since_boot", []))
    new = [n for n in now["since_boot"] if n not in seen]
    if new:
        flags.append(f"Pi firmware: newly occurred during the run: {', '.join(new)}")
    return flags


def _drift_flag(latencies_ms: list[float]) -> list[str]:
    k = len(latencies_ms) // 10
    if k < 1:
        return []
    first, last = statistics.median(latencies_ms[:k]), statistics.median(latencies_ms[-k:])
    if first > 0 and last > first * (1 + DRIFT):
        return [
            f"latency drift: median of the last 10% is {100 * (last / first - 1):.1f}% slower "
            f"than the first 10% ({first:.3f} -> {last:.3f} ms)"
        ]
    return []


def throttle_flags(before: dict, after: dict, latencies_ms: list[float]) -> list[str]:
    """Say what in two :func:`device_state` snapshots and a latency series suggests throttling.

    Args:
        before: Snapshot taken before the run.
        after: Snapshot taken after it.
        latencies_ms: Timed-loop latencies in run order (warm-up excluded).

    Returns:
        Human-readable flags: a CPU or devfreq (GPU) current or max clock fell > 5 %, a zone rose
        > 10 °C or is above 85 °C, Pi throttle bits active or newly set since boot, or the median of the
        last 10 % of latencies is > 5 % slower than the first 10 %. Empty: no sign of throttling.

    Example:
        >>> throttle_flags({"thermal": {"cpu": 50.0}}, {"thermal": {"cpu": 52.0}}, [1.0] * 20)
        []
        >>> throttle_flags({}, {}, [1.0] * 10 + [1.2] * 10)
        ['latency drift: median of the last 10% is 20.0% slower than the first 10% (1.000 -> 1.200 ms)']
    """
    return (
        _clock_flags(before, after, "cpus", "khz", 1e3)
        + _clock_flags(before, after, "devfreq", "hz", 1e6)
        + _temp_flags(before, after)
        + _pi_flags(before, after)
        + _drift_flag(list(latencies_ms))
    )


def main(argv: list[str] | None = None) -> int:
    """``python statecore.py state [--root R]``: print :func:`device_state` as one JSON line."""
    p = argparse.ArgumentParser(
        prog="statecore", description="Print the device's power mode, clocks, temperatures and throttling."
    )
    p.add_argument("command", choices=["state"])
    p.add_argument("--root", default=os.environ.get("EDGEKIT_SYSFS_ROOT", "/"), help="sysfs root")
    args = p.parse_args(argv)
    print(json.dumps(device_state(args.root), separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
