"""Power samplers and energy per inference from a sampled power trace.

A sampler records ``(t, watts)`` pairs on the device's monotonic clock while the benchmark runs; the
runner reports its timed window on the same clock, so the two line up without clock sync.
Energy follows research/device-benchmarking.md §5.3: trapezoidal integral over the window with the
power linearly interpolated at both edges, divided by the number of inferences, with and without the
idle power. No sensor means ``None`` ("not measured"), never 0 W; a trace that does not cover the
window is "not measured" with the reason, never an extrapolated number.

Samplers are a registry keyed by the target's ``power.sensor`` (:data:`SAMPLERS`):

- ``tegrastats``, ``ina3221``, ``rpi`` run *on the device*: ``runners/power_sample.py`` (stdlib only)
  is pushed with the runner and started as a background process; it stamps every sample with the
  board's ``time.monotonic()`` and carries its own deadline, so it stops even if the host vanishes.
- ``meter`` runs *on the host*: an external meter's command prints one reading (watts) per line; each
  is stamped with the host's clock and moved to the device's clock by an offset measured over the link
  (recorded, with its uncertainty).
- ``none``: nothing measured, and the record says so.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgekit.core.errors import ConfigError, DeviceError

Sample = tuple[float, float]
"""``(t_seconds_monotonic, watts)``."""

NOT_MEASURED = "not measured (no sensor on this target)"


@dataclass
class SamplerSession:
    """Where a sampler runs: the device's transport, the agent's work folder there, its Python.

    Attributes:
        transport: The device's transport.
        work: The agent's work folder on the device (sampler files are pushed there).
        python: Interpreter on the device.
        deadline_s: The sampler stops by itself after this many seconds, whatever happens to the host.
    """

    transport: Any = None
    work: str = ""
    python: str = "python3"
    deadline_s: float = 3600.0


@runtime_checkable
class PowerSampler(Protocol):
    """Records power while a benchmark runs.

    Attributes:
        name: Sampler name (``"none"``, ``"tegrastats"``...).
        rails: Which rails the watts cover (``"VDD_IN (module input)"``); energy from different
            scopes must not be compared.
        files: Runner files the agent pushes beside the runner for this sampler.
        measures: False for the null sampler (no idle baseline is taken then).
        note: After :meth:`stop`, why nothing was measured (empty when it was).
        facts: Sensor, interval, clock and scope of the trace, for the record (may grow in :meth:`stop`).
    """

    name: str
    rails: str
    files: tuple[str, ...]
    measures: bool
    note: str
    facts: dict[str, Any]

    def start(self, session: SamplerSession | None = None) -> None:
        """Begin sampling."""
        ...

    def stop(self) -> list[Sample]:
        """Stop sampling and return the samples, oldest first (empty if nothing was measured)."""
        ...


class NullSampler:
    """The sampler of targets without a power sensor: measures nothing and says so.

    Example:
        >>> s = NullSampler()
        >>> s.start(); s.stop()
        []
        >>> energy_per_inference([], 0.0, 1.0, 100) is None
        True
    """

    name = "none"
    rails = NOT_MEASURED
    files: tuple[str, ...] = ()
    measures = False
    note = NOT_MEASURED
    facts: dict[str, Any] = {}

    def start(self, session: SamplerSession | None = None) -> None:
        """Nothing to start."""

    def stop(self) -> list[Sample]:
        """Return no samples."""
        return []

    def __enter__(self) -> NullSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of a timed window from a power trace.

    Attributes:
        mj_per_inference: Total energy per inference (what a deployment pays), mJ.
        dynamic_mj_per_inference: Energy above idle per inference, mJ (``None`` without idle power).
        mean_power_w: Average power over the window.
        window_s: Window length in seconds.
        samples_in_window: Samples strictly inside the window (few = per-window average only).
    """

    mj_per_inference: float
    dynamic_mj_per_inference: float | None
    mean_power_w: float
    window_s: float
    samples_in_window: int


def energy_per_inference(
    samples: list[Sample], t0: float, t1: float, n: int, idle_w: float | None = None
) -> EnergyEstimate | None:
    """Integrate power over ``[t0, t1]`` and divide by the ``n`` inferences it contains.

    The trace is linearly interpolated at ``t0`` and ``t1``, then integrated with the trapezoidal
    rule, so unequal sample spacing does not bias the result. It must cover the window (a sample at
    or before ``t0`` and one at or after ``t1``): nothing is extrapolated.

    Args:
        samples: ``(t, watts)`` on the same clock as ``t0``/``t1``.
        t0: Window start.
        t1: Window end (> ``t0``).
        n: Inferences run inside the window (> 0).
        idle_w: Idle power in the same power mode, for the dynamic (model-attributable) energy.

    Returns:
        The estimate, or ``None`` when there are no samples or they do not cover the window
        (:func:`coverage_gap` says why).

    Example:
        >>> e = energy_per_inference([(0.0, 2.0), (1.0, 4.0)], 0.0, 1.0, n=10, idle_w=1.0)
        >>> round(e.mj_per_inference, 6), round(e.dynamic_mj_per_inference, 6)
        (300.0, 200.0)
    """
    if not samples:
        return None
    if t1 <= t0 or n <= 0:
        raise ValueError(f"need t1 > t0 and n > 0, got window [{t0}, {t1}] and n={n}")
    if coverage_gap(samples, t0, t1):
        return None
    trace = np.asarray(sorted(samples), dtype=np.float64)
    t, p = trace[:, 0], trace[:, 1]
    inside = (t > t0) & (t < t1)
    ts = np.concatenate([[t0], t[inside], [t1]])
    ps = np.interp(ts, t, p)
    joules = float(np.sum((ps[1:] + ps[:-1]) * np.diff(ts)) / 2.0)
    window = t1 - t0
    dynamic = None if idle_w is None else (joules - idle_w * window) * 1e3 / n
    return EnergyEstimate(joules * 1e3 / n, dynamic, joules / window, window, int(inside.sum()))


def coverage_gap(samples: list[Sample], t0: float, t1: float) -> str | None:
    """Why a trace cannot give the energy of ``[t0, t1]`` (``None`` when it covers the window).

    Example:
        >>> coverage_gap([(1.0, 2.0), (3.0, 2.0)], 0.5, 2.0)
        'the power trace starts 0.500 s after the timed window does'
    """
    if not samples:
        return "no power samples were recorded"
    first, last = min(t for t, _ in samples), max(t for t, _ in samples)
    if first > t0:
        return f"the power trace starts {first - t0:.3f} s after the timed window does"
    if last < t1:
        return f"the power trace ends {t1 - last:.3f} s before the timed window does"
    return None


def idle_power(samples: list[Sample], t0: float, t1: float, min_samples: int = 3) -> float | None:
    """Median power over the idle window ``[t0, t1]`` (``None`` with fewer than ``min_samples``)."""
    inside = [w for t, w in samples if t0 <= t <= t1]
    return float(np.median(inside)) if len(inside) >= min_samples else None


class DeviceSampler:
    """A sensor read on the device by ``runners/power_sample.py`` (tegrastats, INA3221 sysfs, Pi PMIC).

    Args:
        sensor: ``tegrastats``, ``ina3221`` or ``rpi``.
        interval_ms: Sampling period.
        rails: Rails to sum (``None`` = the board's total-power rule, research §1.3).
    """

    files = ("powercore.py", "power_sample.py")
    measures = True

    def __init__(self, sensor: str, interval_ms: int = 100, rails: list[str] | None = None) -> None:
        self.name, self.interval_ms, self.rail_list = sensor, interval_ms, rails
        self.rails = f"{sensor} (rails named by the device)"
        self.note = ""
        self.facts: dict[str, Any] = {
            "sensor": sensor,
            "interval_ms": interval_ms,
            "clock": "device monotonic",
        }
        self._proc: Any = None
        self._session: SamplerSession | None = None

    def start(self, session: SamplerSession | None = None) -> None:
        """Start the sampler on the device in the background."""
        if session is None or session.transport is None:
            raise ValueError("a device sampler needs the agent's session (transport, work folder)")
        self._session = session
        self._out = posixpath.join(session.work, "power.jsonl")
        argv = [session.python, posixpath.join(session.work, "power_sample.py"), "--sensor", self.name]
        argv += ["--interval-ms", str(self.interval_ms), "--out", self._out]
        argv += ["--max-seconds", f"{session.deadline_s:.0f}", "--watch-stdin"]
        argv += ["--rails", ",".join(self.rail_list)] if self.rail_list else []
        self._proc = session.transport.start(argv)

    def alive(self) -> bool:
        """True while the sampler runs on the device."""
        return self._proc is not None and self._proc.alive()

    def stop(self) -> list[Sample]:
        """Stop the sampler, fetch its trace and return the samples (``note`` says why if none)."""
        if self._proc is None or self._session is None:
            return []
        result = self._proc.stop(grace=3.0)
        with tempfile.TemporaryDirectory(prefix="edgekit-power-") as tmp:
            local = Path(tmp) / "power.jsonl"
            try:
                self._session.transport.get(self._out, local)
            except DeviceError:
                tail = result.tail(3)
                self.note = f"not measured: the {self.name} sampler wrote nothing ({tail or 'no output'})"
                return []
            return self._parse(local.read_text(), result)

    def _parse(self, text: str, result: Any) -> list[Sample]:
        samples: list[Sample] = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; complete lines are all that count
            if "t" in row and "w" in row:
                samples.append((float(row["t"]), float(row["w"])))
            elif "scope" in row:
                self.rails = str(row["scope"])
                self.facts.update({k: v for k, v in row.items() if k != "pid"})
        if not samples:
            self.note = (
                f"not measured: the {self.name} sampler recorded no samples ({result.tail(3) or 'no output'})"
            )
        return samples


class MeterSampler:
    """An external power meter read on the host; its samples are moved onto the device's clock.

    Args:
        command: Argv of a program that prints one reading in watts per line (``<watts>`` or
            ``<anything> <watts>``: the last field counts), e.g. a USB-C meter's logger.
        scope: What the meter measures (``"wall power at the board's USB-C input"``).
    """

    files: tuple[str, ...] = ()
    measures = True

    def __init__(self, command: list[str], scope: str = "external meter (scope as wired)") -> None:
        self.name, self.command, self.rails = "meter", list(command), scope
        self.note = ""
        self.facts: dict[str, Any] = {"sensor": "meter", "clock": "host monotonic + measured offset"}
        self._samples: list[Sample] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self, session: SamplerSession | None = None) -> None:
        """Measure the host→device clock offset, then start reading the meter."""
        offset, uncertainty = clock_offset(session.transport) if session and session.transport else (0.0, 0.0)
        self.facts.update({"clock_offset_s": offset, "clock_offset_uncertainty_s": uncertainty})
        try:
            self._proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot run the power meter command {self.command[0]!r}: {exc.strerror}",
                "set power.meter_command in the target YAML to the meter's logging program",
            ) from exc

        def read() -> None:
            for line in self._proc.stdout:
                with contextlib.suppress(ValueError, IndexError):
                    self._samples.append((time.monotonic() + offset, float(line.split()[-1])))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop the meter command and return its samples on the device's clock."""
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            if self._proc.poll() is None:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._samples:
            self.note = "not measured: the meter command printed no readings"
        return list(self._samples)


def clock_offset(transport: Any, rounds: int = 5) -> tuple[float, float]:
    """Device monotonic minus host monotonic, from the round trip with the smallest delay.

    Returns:
        ``(offset_s, uncertainty_s)`` where the uncertainty is half that round trip.
    """
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        h0 = time.monotonic()
        device = transport.monotonic()
        h1 = time.monotonic()
        candidate = (device - (h0 + h1) / 2, (h1 - h0) / 2)
        if best is None or candidate[1] < best[1]:
            best = candidate
    return best if best is not None else (0.0, 0.0)


SAMPLERS: dict[str, str] = {
    "none": "no sensor: power and energy are not measured",
    "tegrastats": "Jetson tegrastats rails, read on the board",
    "ina3221": "INA3221 hwmon/IIO sysfs rails, read on the board",
    "rpi": "Raspberry Pi 5 PMIC ADC (vcgencmd pmic_read_adc), read on the board",
    "meter": "an external meter read on the host (power.meter_command), moved onto the board's clock",
}
"""Every ``power.sensor`` a target may name, and what it reads."""


def sampler_for(power: Any) -> PowerSampler:
    """The sampler a target's ``power:`` block asks for.

    Raises:
        ConfigError: Unknown sensor, or ``meter`` without a ``meter_command``.
    """
    sensor = power.sensor
    if sensor not in SAMPLERS:
        raise ConfigError(f"unknown power sensor {sensor!r}", f"use one of: {', '.join(SAMPLERS)}")
    if sensor == "none":
        return NullSampler()
    if sensor == "meter":
        if not power.meter_command:
            raise ConfigError(
                "power.sensor 'meter' needs power.meter_command (a program printing watts per line)",
                "set power.meter_command in the target YAML, or use sensor: none",
            )
        return MeterSampler(power.meter_command, power.scope or "external meter (scope as wired)")
    return DeviceSampler(sensor, power.interval_ms, power.rails)
