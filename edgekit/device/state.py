"""A device's state as the host reads it: the typed view of what ``runners/statecore.py`` reports.

The runner side prints plain JSON (it never imports edgekit); the agent turns it into a
:class:`DeviceState` once, and the bench stage, the record and the report read its fields instead of
looking keys up in the dict. The dict itself is kept (``raw``) for the record, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuState:
    """One CPU core's frequency policy (``None``: the board does not expose it)."""

    governor: str | None = None
    cur_khz: int | None = None
    max_khz: int | None = None


@dataclass(frozen=True)
class DeviceState:
    """Board, L4T, power mode, CPU policies and temperatures of a device at one moment.

    Attributes:
        raw: What statecore reported (kept as it is for the record).
        model: The board's model string.
        l4t: The Jetson L4T release (``R35.4.1``).
        power_mode: The nvpmodel power mode's name.
        cpus: Per core: governor and clocks.
        thermal: ``{zone: °C}``.
        error: Why the state could not be read (``None`` when it was).

    Example:
        >>> s = DeviceState.from_report({"model": "Pi 4", "cpus": {"cpu0": {"governor": "ondemand"}}})
        >>> s.model, s.governors
        ('Pi 4', ['ondemand'])
    """

    raw: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    l4t: str | None = None
    power_mode: str | None = None
    cpus: dict[str, CpuState] = field(default_factory=dict)
    thermal: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any] | None) -> DeviceState:
        """Read statecore's JSON (missing keys are ``None`` / empty)."""
        report = dict(report or {})
        nvpmodel = report.get("nvpmodel")
        cpus = {
            name: CpuState(c.get("governor"), c.get("cur_khz"), c.get("max_khz"))
            for name, c in (report.get("cpus") or {}).items()
            if isinstance(c, dict)
        }
        return cls(
            raw=report,
            model=report.get("model"),
            l4t=report.get("l4t"),
            power_mode=nvpmodel.get("name") if isinstance(nvpmodel, dict) else nvpmodel,
            cpus=cpus,
            thermal={str(k): float(v) for k, v in (report.get("thermal") or {}).items()},
            error=report.get("error"),
        )

    @property
    def governors(self) -> list[str]:
        """The distinct CPU governors, sorted."""
        return sorted({c.governor for c in self.cpus.values() if c.governor})

    @property
    def max_khz(self) -> list[int]:
        """The distinct CPU maximum clocks, sorted."""
        return sorted({c.max_khz for c in self.cpus.values() if c.max_khz})

    @property
    def hottest(self) -> float | None:
        """The hottest thermal zone (°C), ``None`` without zones."""
        return max(self.thermal.values(), default=None)

    def identity(self) -> dict[str, Any]:
        """The facts that make a different measurement: board, L4T, power mode, governors, max clocks.

        They go into the bench node's config, so the same artifact measured in another power mode or on
        another board is a different node id.
        """
        return {
            "model": self.model,
            "l4t": self.l4t,
            "nvpmodel": self.power_mode,
            "governors": self.governors,
            "max_khz": self.max_khz,
        }

    def warnings(self, power_mode: str | None, governor: str | None) -> list[str]:
        """The device is not in the state the target asks for: say so (the run measures anyway)."""
        out = []
        if power_mode and self.power_mode and self.power_mode != power_mode:
            out.append(
                f"the board runs power mode {self.power_mode}, the target asks for {power_mode} "
                "(sudo nvpmodel -m <id>)"
            )
        if governor and self.governors and self.governors != [governor]:
            found = ", ".join(self.governors)
            out.append(f"CPU governor is {found}, the target asks for {governor} (cpufreq-set -g {governor})")
        return out
