"""One report across runs: ``edgekit report RUN1 RUN2 ... --compare``.

Each run is read from its ``record.json`` alone (through the same flat summary as ``summary.json``);
the report is a table (target, backend, precision, recipe, mAP from the device's outputs, latency,
FPS, size, energy where measured) and the accuracy-against-latency Pareto front: a run is dominated
when another is at least as accurate and at least as fast, and better in one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import DataError
from edgekit.core.files import atomic_write_text
from edgekit.report.record import RunRecord
from edgekit.report.summary import Summary
from edgekit.report.templates import Heading, Image, Paragraph, Table, to_html, to_markdown

NONE = "not measured"
PLOT = "pareto.png"


@dataclass(frozen=True)
class RunPoint:
    """One run on the comparison: its summary, and its coordinates on the front."""

    run: Path
    summary: Summary

    @property
    def accuracy(self) -> float | None:
        """mAP@0.5:0.95 from the device's outputs."""
        return self.summary.deployed.map50_95

    @property
    def latency(self) -> float | None:
        """Latency p50 on the device (ms)."""
        return self.summary.latency_ms.p50

    @property
    def label(self) -> str:
        """``target/backend/precision/recipe``."""
        s = self.summary
        return f"{s.target}/{s.backend}/{s.precision}/{s.recipe}"


def load_points(runs: list[str | Path]) -> list[RunPoint]:
    """Read every run's record (a folder without one is a DataError naming it)."""
    points = []
    for run in map(Path, runs):
        record = RunRecord.load(run / "record.json")
        points.append(RunPoint(run, Summary.of(record)))
    if len(points) < 2:
        raise DataError("--compare needs at least two run folders", "pass two or more runs/<id> folders")
    metrics = {p.summary.metric for p in points}
    if len(metrics) > 1:
        named = ", ".join(f"{p.run.name} ({p.summary.metric})" for p in points)
        raise DataError(
            f"the runs measure different things (mAP against labels, teacher agreement without): {named}",
            "pass only runs of one metric (runs of a user's model without --data measure teacher agreement)",
        )
    return points


def _metric_name(points: list[RunPoint]) -> str:
    return "teacher agreement" if points[0].summary.metric == "teacher_agreement" else "mAP"


def dominated(points: list[RunPoint]) -> list[bool]:
    """For each point: is another one at least as accurate and as fast, and better in one of the two?

    Runs without both coordinates are never on the front (and never dominate).

    Example:
        >>> from edgekit.report.record import RunRecord
        >>> def mk(a, l):
        ...     s = Summary.of(RunRecord.new("r", [], {"name": "local"}, {"name": "none"}))
        ...     s.deployed.map50_95, s.latency_ms.p50 = a, l
        ...     return RunPoint(Path("."), s)
        >>> dominated([mk(0.5, 1.0), mk(0.4, 2.0), mk(0.6, 3.0)])
        [False, True, False]
    """
    out = []
    for p in points:
        if p.accuracy is None or p.latency is None:
            out.append(True)
            continue
        out.append(
            any(
                q is not p
                and q.accuracy is not None
                and q.latency is not None
                and q.accuracy >= p.accuracy
                and q.latency <= p.latency
                and (q.accuracy > p.accuracy or q.latency < p.latency)
                for q in points
            )
        )
    return out


def _num(value: Any, digits: int, unit: str = "") -> str:
    return NONE if value is None else f"{value:.{digits}f}{unit}"


def _size(value: Any) -> str:
    return NONE if value is None else f"{value / 1024:.0f} KiB"


def _row(p: RunPoint, is_dominated: bool) -> list[str]:
    s, lat = p.summary, p.summary.latency_ms
    return [
        p.run.name,
        str(s.target),
        str(s.backend),
        str(s.precision),
        str(s.recipe),
        _num(p.accuracy, 3),
        _num(lat.p50, 3),
        _num(lat.p99, 3),
        _num(s.fps, 0),
        _size(s.deployed.artifact_bytes),
        _num(s.energy_mj_per_inference, 2, " mJ"),
        "dominated" if is_dominated else "on the front",
    ]


HEADERS = [
    "run",
    "target",
    "backend",
    "precision",
    "recipe",
    "mAP50-95 (device)",
    "p50 (ms)",
    "p99 (ms)",
    "FPS",
    "size",
    "energy / inference",
    "Pareto",
]


def draw_front(points: list[RunPoint], flags: list[bool], path: Path) -> Path | None:
    """Scatter mAP against latency p50; the front is joined, dominated runs are grey."""
    from edgekit.report.plots import ACCENT, MUTED, _figure, _save

    placed = [(p, d) for p, d in zip(points, flags, strict=True) if p.accuracy is not None and p.latency]
    if not placed:
        return None
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for p, d in placed:
        ax.scatter(p.latency, p.accuracy, color=MUTED if d else ACCENT, zorder=3)
        ax.annotate(p.label, (p.latency, p.accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((p.latency, p.accuracy) for p, d in placed if not d)
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color=ACCENT, linewidth=1, zorder=2)
    ax.set_xlabel("latency p50 on the device (ms)")
    ax.set_ylabel(f"{_metric_name(points)}@0.5:0.95 (device outputs)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def render_compare(runs: list[str | Path], out_dir: str | Path, html: bool = True) -> list[Path]:
    """Write ``compare.md`` (and ``compare.html``) with the table and the Pareto plot into ``out_dir``.

    Raises:
        DataError: Fewer than two runs, or a folder without a readable ``record.json``.

    Example:
        >>> render_compare(["runs/a", "runs/b"], "runs/compare")  # doctest: +SKIP
        [PosixPath('runs/compare/compare.md'), PosixPath('runs/compare/compare.html'), ...]
    """
    points = load_points(runs)
    flags = dominated(points)
    out_dir = Path(out_dir)
    plot = draw_front(points, flags, out_dir / "report_files" / PLOT)
    numeric = frozenset(range(5, 11))
    title = f"Comparison of {len(points)} runs"
    blocks = [
        Heading(title, 1),
        Paragraph(
            f"{_metric_name(points)} from each device's own outputs; latency p50/p99 measured on the device.",
            tone="note",
        ),
        Table(
            [
                h.replace("mAP", "agreement ") if h.startswith("mAP") and _metric_name(points) != "mAP" else h
                for h in HEADERS
            ],
            [_row(p, d) for p, d in zip(points, flags, strict=True)],
            numeric,
        ),  # fmt: skip
        Paragraph(
            "A run is dominated when another is at least as accurate and at least as fast (p50), "
            "and better in one of the two.",
            tone="note",
        ),
    ]
    if plot is not None:
        blocks += [Heading("Accuracy against latency"), Image(f"report_files/{PLOT}", "Pareto front")]
    written = [atomic_write_text(out_dir / "compare.md", to_markdown(blocks))]
    if html:
        written.append(atomic_write_text(out_dir / "compare.html", to_html(title, blocks)))
    return written + ([plot] if plot else [])
