"""Device-side power and platform-state parsing (stdlib only: copied to the board, imported by the host).

Four parts, formats as in research/device-benchmarking.md §1 and §3.5:

* tegrastats lines (:func:`parse_tegrastats`) and the per-module "total power" rule (:func:`total_power_w`);
* the INA3221 power monitor read straight from sysfs (:func:`find_ina3221`, :func:`read_ina3221`);
* the Raspberry Pi 5 PMIC and tool outputs (``nvpmodel -q``, ``jetson_clocks --show``,
  ``vcgencmd get_throttled``, ``/etc/nv_tegra_release``);
* a before/after platform snapshot (:func:`device_state`, ``python powercore.py state``) and the
  throttling verdict drawn from two snapshots and the latencies (:func:`throttle_flags`).

Every sysfs path is taken under a ``root`` so tests can point it at a fake tree. Nothing here invents a
value: what the board does not expose is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# -- tegrastats -----------------------------------------------------------------------------------------

_DATE = re.compile(r"^\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2} ?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?\b")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?:/(-?\d+(?:\.\d+)?)C)?\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kMG]B)")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kMG]B)")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_GR3D = re.compile(r"\b(GR3D2?_FREQ) (\S+)")
_EMC = re.compile(r"\bEMC_FREQ (\S+)")
_UNIT_MB = {"kB": 1 / 1024, "MB": 1, "GB": 1024}

#: tegrastats prints this temperature for a powered-down thermal zone.
TEMP_OFFLINE = -256.0
#: Zones that tegrastats prints with a fixed placeholder value (``PMIC@50C``, ``PMIC@100C``).
PLACEHOLDER_ZONES = frozenset({"PMIC"})


def _mb(value: str, unit: str) -> int:
    return round(int(value) * _UNIT_MB[unit])


def _cpu_core(entry: str, shared_mhz: int | None) -> dict | None:
    """One ``CPU [...]`` entry: ``off``, ``X%@F``, ``X%`` (legacy, frequency after the bracket)."""
    entry = entry.strip()
    if entry in ("", "off"):
        return {"load": None, "mhz": None, "online": False}
    load = re.match(r"(\d+)%", entry)
    mhz = re.search(r"@(\d+)", entry)
    if not load and not mhz:
        return None  # not a core (e.g. an elided "..." in a pasted line)
    freq = int(mhz.group(1)) if mhz else shared_mhz
    return {"load": int(load.group(1)) if load else None, "mhz": freq, "online": True}


def _load_freq(value: str) -> tuple[int | None, list[int]]:
    """``37%``, ``0%@76``, ``0%@[305,305]``, ``@[1000,1000]`` -> (load, [MHz per GPC or one])."""
    load = re.match(r"(\d+)%", value)
    freq = re.search(r"@\[([\d,]+)\]|@(\d+)", value)
    mhz: list[int] = []
    if freq:
        mhz = [int(f) for f in (freq.group(1) or freq.group(2)).split(",") if f]
    return (int(load.group(1)) if load else None), mhz


def _temps(text: str) -> dict[str, float | None]:
    temps: dict[str, float | None] = {}
    for name, value, _second in _TEMP.findall(text):
        if name in PLACEHOLDER_ZONES:
            continue
        celsius = float(value)
        temps[name] = None if celsius <= TEMP_OFFLINE else celsius
    return temps


def parse_tegrastats(line: str) -> dict:
    """Parse one tegrastats line as a bag of tokens (no fixed field order, no ``VDD_`` prefix assumed).

    Args:
        line: One line of tegrastats output, JetPack 4 to 7 (a line wrapped over several lines is
            fine: whitespace runs are collapsed). The JetPack 5+ date prefix is dropped: it has 1-second
            resolution, callers stamp lines themselves.

    Returns:
        ``{"rails": {name: {"cur_mw", "avg_mw"}}, "temps": {name: °C or None when offline},
        "cpu": [{"load", "mhz", "online"}], "gr3d": {"load", "mhz": [...]}, "emc": {"load", "mhz"},
        "ram_mb": (used, total)}``; keys whose token is absent are left out (``gr3d2`` and ``swap_mb``
        appear when printed). JetPack 7's undocumented third power value is dropped, as jetson_stats
        does; the two ``NC`` rails of AGX Orin collapse into one (both read 0). PMIC is a placeholder
        and never reported.

    Example:
        >>> s = parse_tegrastats("RAM 1923/3964MB (lfb 2x2MB) CPU [5%@1224,off] GR3D_FREQ 0%@[114] "
        ...                      "GPU@40C CV0@-256C PMIC@50C POM_5V_IN 1750/1628")
        >>> s["rails"], s["temps"], s["cpu"][1]["online"]
        ({'POM_5V_IN': {'cur_mw': 1750, 'avg_mw': 1628}}, {'GPU': 40.0, 'CV0': None}, False)
        >>> s["gr3d"], s["ram_mb"]
        ({'load': 0, 'mhz': [114]}, (1923, 3964))
    """
    text = _DATE.sub("", " ".join(line.split()))
    out: dict = {"rails": {}, "temps": _temps(text)}
    for name, cur, avg, _third in _RAIL.findall(text):
        out["rails"][name] = {"cur_mw": int(cur), "avg_mw": int(avg)}
    cpu = _CPU.search(text)
    if cpu:
        shared = int(cpu.group(2)) if cpu.group(2) else None
        cores = (_cpu_core(e, shared) for e in cpu.group(1).split(","))
        out["cpu"] = [c for c in cores if c is not None]
    for name, value in _GR3D.findall(text):
        load, mhz = _load_freq(value)
        out["gr3d" if name == "GR3D_FREQ" else "gr3d2"] = {"load": load, "mhz": mhz}
    emc = _EMC.search(text)
    if emc:
        load, mhz = _load_freq(emc.group(1))
        out["emc"] = {"load": load, "mhz": mhz[0] if mhz else None}
    for key, pattern in (("ram_mb", _RAM), ("swap_mb", _SWAP)):
        found = pattern.search(text)
        if found:
            out[key] = (_mb(found.group(1), found.group(3)), _mb(found.group(2), found.group(3)))
    return out


# -- total power ----------------------------------------------------------------------------------------

_OUTSIDE = "carrier and USB not included"
#: Module rule sets of research §1.3, first match wins: (rails summed, scope text).
TOTAL_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("VDD_IN",), f"VDD_IN (module input; {_OUTSIDE})"),
    (("POM_5V_IN",), f"POM_5V_IN (module input; {_OUTSIDE})"),
    (
        ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),
        f"VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (AGX Orin module rails; {_OUTSIDE})",
    ),
    (
        ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),
        f"GPU + CPU + SOC + CV + VDDRQ + SYS5V (AGX Xavier module rails, no input rail; {_OUTSIDE})",
    ),
)


def _cur_mw(value: dict | float) -> float:
    """A rail's instantaneous mW: a tegrastats ``{"cur_mw", ...}`` entry or a plain number."""
    return float(value["cur_mw"]) if isinstance(value, dict) else float(value)


def _pick_rails(rails: dict, rails_spec: list[str] | None) -> tuple[list[str], str]:
    if rails_spec:
        missing = [r for r in rails_spec if r not in rails]
        if missing:
            raise ValueError(
                f"rails {', '.join(missing)} not reported (this board has: {', '.join(rails) or 'none'})"
            )
        return list(rails_spec), f"{' + '.join(rails_spec)} (rails asked for; {_OUTSIDE})"
    for names, scope in TOTAL_RULES:
        if all(n in rails for n in names):
            return list(names), scope
    names = [r for r in rails if r != "NC"]
    if not names:
        raise ValueError("no power rails reported")
    return names, f"{' + '.join(names)} (sum of all reported rails; unknown module, may double count)"


def total_power_w(rails: dict, rails_spec: list[str] | None = None) -> tuple[float, str]:
    """Total board/module power in W from instantaneous rail values, with the rail scope it covers.

    Rule (research §1.3): ``VDD_IN`` alone, else ``POM_5V_IN`` alone (sub-rails are inside them), else
    AGX Orin's three module rails, else AGX Xavier's six, else every rail but ``NC``.

    Args:
        rails: ``{name: {"cur_mw": ...}}`` from :func:`parse_tegrastats` or ``{name: mW}``.
        rails_spec: Sum exactly these rails instead of applying the rule.

    Returns:
        ``(watts, scope)``; scope names the rails, e.g. ``"VDD_IN (module input; ...)"``.

    Raises:
        ValueError: A rail of ``rails_spec`` is missing (named in the message), or no rail at all.

    Example:
        >>> total_power_w({"VDD_IN": {"cur_mw": 5079, "avg_mw": 5000}, "VDD_SOC": {"cur_mw": 1104}})[0]
        5.079
        >>> total_power_w({"VDD_GPU_SOC": 3205, "VDD_CPU_CV": 4405, "VIN_SYS_5V0": 4767, "NC": 0})[0]
        12.377
    """
    names, scope = _pick_rails(rails, rails_spec)
    return sum(_cur_mw(rails[n]) for n in names) / 1000.0, scope


# -- INA3221 sysfs --------------------------------------------------------------------------------------

_HWMON_LABELS = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"
_IIO_DIRS = ("sys/bus/i2c/drivers/ina3221x/*/iio:device*", "sys/bus/i2c/drivers/ina3221x/*/iio_device")


def _skip_label(label: str) -> bool:
    return label in ("", "NC") or label.lower().startswith("sum of shunt")


def _channel(rail: str, layout: str, power: Path | None, voltage: Path, current: Path) -> dict:
    return {"rail": rail, "layout": layout, "power": str(power) if power else None,
            "voltage": str(voltage), "current": str(current)}  # fmt: skip


def _hwmon_channels(root: Path) -> list[dict]:
    """JetPack >= 5 mainline driver: channels 1..3, P = in<ch>_input mV x curr<ch>_input mA."""
    out = []
    for label_path in sorted(root.glob(_HWMON_LABELS)):
        ch = re.fullmatch(r"in(\d+)_label", label_path.name).group(1)
        label = label_path.read_text().strip()
        voltage = label_path.with_name(f"in{ch}_input")
        current = label_path.with_name(f"curr{ch}_input")
        if _skip_label(label) or not (voltage.is_file() and current.is_file()):
            continue
        out.append(_channel(label, "hwmon", None, voltage, current))
    return out


def _iio_channels(root: Path) -> list[dict]:
    """JetPack <= 4 NVIDIA IIO driver: channels 0..2 with rail_name_<ch> and in_power<ch>_input mW."""
    out = []
    devices = sorted({d for pattern in _IIO_DIRS for d in root.glob(pattern) if d.is_dir()})
    for device in devices:
        for name_path in sorted(device.glob("rail_name_*")):
            ch = name_path.name.rsplit("_", 1)[1]
            label = name_path.read_text().strip()
            power = device / f"in_power{ch}_input"
            voltage, current = device / f"in_voltage{ch}_input", device / f"in_current{ch}_input"
            if _skip_label(label) or not (power.is_file() or (voltage.is_file() and current.is_file())):
                continue
            out.append(_channel(label, "iio", power if power.is_file() else None, voltage, current))
    return out


def find_ina3221(root: str = "/") -> list[dict]:
    """Find the INA3221 channels a Jetson exposes in sysfs, either driver layout.

    Args:
        root: Filesystem root the ``sys/...`` paths are taken under (``"/"`` on a board).

    Returns:
        One dict per named channel: ``{"rail", "layout": "hwmon"|"iio", "power", "voltage", "current"}``
        (file paths; ``power`` is None where only V and I are published). ``NC`` and the
        "sum of shunt voltages" channel are skipped; empty when the board has no INA3221.
    """
    base = Path(root)
    return _hwmon_channels(base) + _iio_channels(base)


def _read_number(path: str) -> float:
    return float(Path(path).read_text().split()[0])


def read_ina3221(channels: list[dict]) -> dict[str, float]:
    """Read every channel once.

    Args:
        channels: From :func:`find_ina3221`.

    Returns:
        ``{rail: mW}`` (``in_power`` where published, else mV x mA / 1000).

    Raises:
        OSError: A sysfs file could not be read (the caller skips that sample).
        ValueError: A file did not hold a number.
    """
    out = {}
    for ch in channels:
        if ch["power"]:
            out[ch["rail"]] = _read_number(ch["power"])
        else:
            out[ch["rail"]] = round(_read_number(ch["voltage"]) * _read_number(ch["current"]) / 1000.0, 3)
    return out


# -- Raspberry Pi and tool outputs ----------------------------------------------------------------------

_PMIC = re.compile(r"^\s*([A-Z0-9_]+)_([AV]) (?:current|volt)\(\d+\)=([\d.]+)[AV]\s*$", re.M)
#: ``vcgencmd get_throttled`` bits (research §3.5): bit -> name; bit + 16 is the same, since boot.
THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}
PMIC_SCOPE = "Pi 5 PMIC rails sum (PMIC side only; USB, HAT and NVMe 5 V loads not included; uncalibrated)"


def parse_pmic_adc(text: str) -> dict:
    r"""Parse ``vcgencmd pmic_read_adc`` (Pi 5), pairing ``X_A`` with ``X_V`` by name, not by line.

    Args:
        text: The command's output.

    Returns:
        ``{"rails": {rail: W}, "total_w": float, "input_v": EXT5V_V or None}``; rails with only a voltage
        (``EXT5V_V``, ``BATT_V``) or only a current are left out.

    Example:
        >>> p = parse_pmic_adc("VDD_CORE_V volt(15)=0.9V\nBATT_V volt(25)=3V\nVDD_CORE_A current(7)=10A")
        >>> p["rails"], round(p["total_w"], 3)
        ({'VDD_CORE': 9.0}, 9.0)
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for rail, kind, value in _PMIC.findall(text):
        (amps if kind == "A" else volts)[rail] = float(value)
    rails = {r: amps[r] * volts[r] for r in amps if r in volts}
    return {"rails": rails, "total_w": sum(rails.values()), "input_v": volts.get("EXT5V")}


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


def run_tool(argv: list[str], timeout_s: float = 10.0) -> str | None:
    """Run a tool found on PATH and return its stdout, or None if it is missing, hangs or prints nothing."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.stdout.strip() else None


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


# -- the sampler's log, read back on the host -----------------------------------------------------------


def read_power_log(text: str) -> tuple[dict | None, list[tuple[float, float]]]:
    """Read a ``power_sample.py`` JSON-lines log.

    Args:
        text: The log file's content (a last line cut short by a killed sampler is ignored).

    Returns:
        ``(header or None, [(t, watts), ...])`` in file order.
    """
    header, samples = None, []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "sensor" in obj:
            header = obj
        elif "t" in obj and "w" in obj:
            samples.append((float(obj["t"]), float(obj["w"])))
    return header, samples


def main(argv: list[str] | None = None) -> int:
    """``python powercore.py state [--root R]``: print :func:`device_state` as one JSON line."""
    p = argparse.ArgumentParser(prog="powercore", description="Print the device's power/clock state.")
    p.add_argument("command", choices=["state"])
    p.add_argument("--root", default=os.environ.get("EDGEKIT_SYSFS_ROOT", "/"), help="sysfs root")
    args = p.parse_args(argv)
    print(json.dumps(device_state(args.root), separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
