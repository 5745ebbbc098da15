"""Device-side power parsing (stdlib only: copied to the board, imported by the host).

Formats as in research/device-benchmarking.md §1 and §3.5:

* tegrastats lines (:func:`parse_tegrastats`) and the per-module "total power" rule (:func:`total_power_w`);
* the INA3221 power monitor read straight from sysfs (:func:`find_ina3221`, :func:`read_ina3221`);
* the Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``, :func:`parse_pmic_adc`);
* the power sampler's log read back on the host (:func:`read_power_log`).

Clocks, temperatures and throttling (the platform state around a run) are in ``statecore.py``.

Every sysfs path is taken under a ``root`` so tests can point it at a fake tree. Nothing here invents a
value: what the board does not expose is left out.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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


# -- tools ---------------------------------------------------------------------------------------------


def run_tool(argv: list[str], timeout_s: float = 10.0) -> str | None:
    """Run a tool found on PATH and return its stdout, or None if it is missing, hangs or prints nothing."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.stdout.strip() else None


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
