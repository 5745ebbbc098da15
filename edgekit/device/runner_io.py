"""What a runner sends back, read on the host: its JSON line, its progress lines, the correctness guard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.core.errors import DeviceError
from edgekit.device.transport import CommandResult


@dataclass
class Guard:
    """The host's reference output on the timing input, and how close the device's must be.

    Attributes:
        reference: The host's output (float, batch dim kept).
        source: What produced it (``"onnxruntime 1.23 on the host, same artifact"``).
        min_cosine: Lowest cosine of the whole output.
        min_part_cosine: Lowest cosine of the box and of the score columns.
        head: Detector head (``yolov5`` / ``yolov8``), to compare boxes and scores on their own.
    """

    reference: np.ndarray
    source: str
    min_cosine: float
    min_part_cosine: float
    head: str | None = None

    def check(self, got: np.ndarray) -> dict[str, Any]:
        """Compare; return the record, or raise when the device's output is not the model's.

        Raises:
            DeviceError: Shapes differ or a cosine is under its limit (no speed is reported then).
        """
        from edgekit.backends.contract.parity import compare

        if tuple(got.shape) != tuple(self.reference.shape):
            raise DeviceError(
                f"the device's output has shape {list(got.shape)}, "
                f"the host's reference {list(self.reference.shape)}",
                "the artifact or runtime on the device is not the one built; rebuild and retry",
            )
        figures = compare(self.reference, got, self.head)
        low = {k: v for k, v in figures.items() if k.endswith("cosine") and v < self._limit(k)}
        record = {"checked": True, "reference": self.source, **{k: round(v, 6) for k, v in figures.items()}}
        if low:
            worst = ", ".join(f"{k} {v:.4f} < {self._limit(k)}" for k, v in low.items())
            raise DeviceError(
                "correctness guard failed: on the fixed input the device's output differs from "
                f"{self.source} "
                f"({worst}); no speed is reported for a model that computes something else",
                "check the runtime version on the device; rebuild the artifact (on the device if it "
                "builds there)",
            )
        return record

    def _limit(self, key: str) -> float:
        return self.min_cosine if key == "cosine" else self.min_part_cosine


def parse_json_line(result: CommandResult) -> dict[str, Any]:
    """The one JSON line a runner mode prints on stdout.

    Raises:
        DeviceError: Not exactly one JSON object line.
    """
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    try:
        if len(lines) != 1:
            raise ValueError(f"expected one JSON line, got {len(lines)}")
        value = json.loads(lines[0])
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise DeviceError(
            f"cannot read the runner's result ({exc}); stdout ends with: {result.stdout[-300:] or '(empty)'}",
            "the runner and edgekit versions may differ; run the runner by hand on the device",
        ) from exc
    return value


_RUNNER_KEYS = ("runtime", "runtime_version", "threads", "first_ms", "warmup_ms", "latencies_ms", "wall_s")


def parse_runner_output(result: CommandResult) -> dict[str, Any]:
    """Parse the runner's one JSON line from stdout.

    Raises:
        DeviceError: No line, several lines, invalid JSON, or missing keys (shows the stdout tail).
    """
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    try:
        if len(lines) != 1:
            raise ValueError(f"expected exactly one JSON line on stdout, got {len(lines)} lines")
        raw = json.loads(lines[0])
        missing = [k for k in _RUNNER_KEYS if not isinstance(raw, dict) or k not in raw]
        if missing:
            raise ValueError(f"runner JSON lacks {', '.join(missing)}")
        if not raw["latencies_ms"] or float(raw["wall_s"]) <= 0:
            raise ValueError("runner reported no timed iterations")
    except ValueError as exc:  # JSONDecodeError is a ValueError
        tail = "\n".join(result.stdout.splitlines()[-5:])[-800:]
        raise DeviceError(
            f"cannot read the runner's result ({exc}); stdout ends with:\n{tail or '(empty)'}",
            "the runner and edgekit versions may differ; run the runner by hand on the device",
        ) from exc
    return raw


class RunnerProgress:
    """A rich progress bar per runner phase, driven by ``@progress <phase> <done> <total>`` lines."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RunnerProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = [
                TextColumn("{task.description:>8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            ]
            self._bar = Progress(*columns, console=Console(stderr=True))
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def feed(self, line: str) -> None:
        """Consume one stderr line; anything that is not a progress line is ignored here."""
        parts = line.split()
        if self._bar is None or len(parts) != 4 or parts[0] != "@progress":
            return
        phase, done, total = parts[1], int(parts[2]), int(parts[3])
        if phase not in self._tasks:
            self._tasks[phase] = self._bar.add_task(phase, total=total)
        self._bar.update(self._tasks[phase], completed=done, total=total)
