"""Power samplers and energy per inference from a sampled power trace.

A sampler records ``(t, watts)`` pairs on the device's monotonic clock while the benchmark runs; the
benchmark reports its timed window on the same clock, so the two line up without clock sync.
Energy follows research/device-benchmarking.md §5.3: trapezoidal integral over the window with the
power linearly interpolated at both edges, divided by the number of inferences, with and without the
idle power. No sensor means ``None`` ("not measured"), never 0 W.

Samplers to come behind the same protocol: tegrastats (Jetson), INA3221 sysfs, Raspberry Pi PMIC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

Sample = tuple[float, float]
"""``(t_seconds_monotonic, watts)``."""

NOT_MEASURED = "not measured (no sensor on this target)"


@runtime_checkable
class PowerSampler(Protocol):
    """Records power while a benchmark runs.

    Attributes:
        name: Sampler name (``"none"``, ``"tegrastats"``...).
        rails: Which rails the watts cover (``"VDD_IN (module input)"``); energy from different
            scopes must not be compared.
    """

    name: str
    rails: str

    def start(self) -> None:
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

    def start(self) -> None:
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

    The trace is linearly interpolated at ``t0`` and ``t1`` (held constant past its ends), then
    integrated with the trapezoidal rule, so unequal sample spacing does not bias the result.

    Args:
        samples: ``(t, watts)`` on the same clock as ``t0``/``t1``.
        t0: Window start.
        t1: Window end (> ``t0``).
        n: Inferences run inside the window (> 0).
        idle_w: Idle power in the same power mode, for the dynamic (model-attributable) energy.

    Returns:
        The estimate, or ``None`` when there are no samples (not measured).

    Example:
        >>> e = energy_per_inference([(0.0, 2.0), (1.0, 4.0)], 0.0, 1.0, n=10, idle_w=1.0)
        >>> round(e.mj_per_inference, 6), round(e.dynamic_mj_per_inference, 6)
        (300.0, 200.0)
    """
    if not samples:
        return None
    if t1 <= t0 or n <= 0:
        raise ValueError(f"need t1 > t0 and n > 0, got window [{t0}, {t1}] and n={n}")
    trace = np.asarray(sorted(samples), dtype=np.float64)
    t, p = trace[:, 0], trace[:, 1]
    inside = (t > t0) & (t < t1)
    ts = np.concatenate([[t0], t[inside], [t1]])
    ps = np.interp(ts, t, p)
    joules = float(np.sum((ps[1:] + ps[:-1]) * np.diff(ts)) / 2.0)
    window = t1 - t0
    dynamic = None if idle_w is None else (joules - idle_w * window) * 1e3 / n
    return EnergyEstimate(joules * 1e3 / n, dynamic, joules / window, window, int(inside.sum()))
