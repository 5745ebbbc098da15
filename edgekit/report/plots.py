"""PNG plots for the report, drawn from a run record alone.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so no global backend is switched
and nothing tries to open a window. Each function returns the PNG it wrote, or None when the record
lacks the data.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.core.files import atomic_write_bytes
from edgekit.report.details import BenchDetails, CompressDetails, details, find
from edgekit.report.record import RunRecord, nearest_rank

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCENT = "#2b6cb0"
MUTED = "#a0aec0"
COST_AXES = (
    ("params", "parameters"),
    ("macs", "MACs"),
    ("size_bytes", "size (bytes)"),
    ("latency_ms_p50", "latency p50 (ms)"),
)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def latency_histogram(record: RunRecord, out_dir: str | Path) -> Path | None:
    """Histogram of the bench node's per-inference latencies with p50 and p99 marked.

    Returns:
        ``out_dir/latency.png``, or None when no bench node kept ``extra.latencies_ms``.
    """
    bench = record.node("bench")
    latencies = details(bench, BenchDetails).latencies_ms
    if not latencies:
        return None
    stats = bench.metric("latency_ms") or {}
    # A few stalls far out in the tail (a VM's scheduler, another process) would squeeze the body of the
    # distribution into one bar; draw up to 1.2 x p99.5 and say how many runs lie beyond.
    ordered = sorted(latencies)
    limit = 1.2 * nearest_rank(ordered, 99.5)
    shown = [v for v in ordered if v <= limit]
    beyond = len(ordered) - len(shown)
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.hist(shown, bins=min(60, max(10, len(shown) // 10)), color=ACCENT, alpha=0.8)
    for key, style in (("p50", "-"), ("p99", "--")):
        if stats.get(key) is not None:
            ax.axvline(stats[key], color="#c53030", linestyle=style, label=f"{key} {stats[key]:.2f} ms")
    ax.set_xlabel("latency per inference (ms)")
    ax.set_ylabel("runs")
    title = f"Latency over {len(latencies)} timed runs"
    if beyond:
        title += f" ({beyond} slower, up to {ordered[-1]:.2f} ms, not drawn)"
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    return _save(fig, Path(out_dir) / "latency.png")


def _cost_panel(ax: Axes, record: RunRecord, cost: str, label: str) -> bool:
    points = [
        (n.metric(cost), n.metric("map50_95"), n.stage)
        for n in record.nodes
        if n.metric(cost) is not None and n.metric("map50_95") is not None
    ]
    ax.set_xlabel(label)
    ax.set_ylabel("mAP@0.5:0.95")
    if not points:
        ax.text(0.5, 0.5, "no stage measured both", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return False
    ax.scatter([p[0] for p in points], [p[1] for p in points], color=MUTED, zorder=2)
    # Nodes with the same figures (train and reference, often) share one label instead of overprinting.
    labels: dict[tuple[float, float], list[str]] = {}
    for x, y, stage in points:
        labels.setdefault((x, y), []).append(stage)
    for (x, y), stages in labels.items():
        ax.annotate(", ".join(stages), (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.margins(x=0.25, y=0.15)
    front = [(n.metric(cost), n.metric("map50_95")) for n in record.pareto(cost)]
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color=ACCENT, zorder=3, label="Pareto front")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return True


def accuracy_vs_cost(record: RunRecord, out_dir: str | Path) -> Path | None:
    """A 2x2 figure of mAP@0.5:0.95 against params, MACs, size and latency p50, one point per node.

    Returns:
        ``out_dir/accuracy_vs_cost.png``, or None when no node has an accuracy and a cost.
    """
    fig = _figure(9.0, 6.6)
    axes = fig.subplots(2, 2).ravel()
    drawn = [_cost_panel(ax, record, cost, label) for ax, (cost, label) in zip(axes, COST_AXES, strict=True)]
    if not any(drawn):
        return None
    fig.suptitle("Accuracy against cost (blue: Pareto front)")
    return _save(fig, Path(out_dir) / "accuracy_vs_cost.png")


def gamma_histogram(record: RunRecord, out_dir: str | Path) -> Path | None:
    """Histogram of BatchNorm |gamma| before and after network slimming (the last node that kept them).

    Returns:
        ``out_dir/bn_gamma.png``, or None when no node has ``extra.gamma_before``/``gamma_after``.
    """
    found = find(reversed(record.nodes), CompressDetails, lambda v: v.gamma_before and v.gamma_after)
    if found is None:
        return None
    node, slim = found
    before = [abs(g) for g in slim.gamma_before]
    after = [abs(g) for g in slim.gamma_after]
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    top = max(before + after) or 1.0
    bins = [top * i / 50 for i in range(51)]
    ax.hist(before, bins=bins, color=MUTED, alpha=0.8, label=f"before ({len(before)} channels)")
    ax.hist(after, bins=bins, color=ACCENT, alpha=0.7, label=f"after ({len(after)} channels)")
    ax.set_xlabel("|BN gamma|")
    ax.set_ylabel("channels")
    ax.set_title(f"BatchNorm scale factors: {node.stage}")
    ax.legend(frameon=False)
    return _save(fig, Path(out_dir) / "bn_gamma.png")


def draw_all(record: RunRecord, out_dir: str | Path) -> dict[str, Path]:
    """Draw every plot the record has data for; return ``{name: png path}``."""
    makers = {"latency": latency_histogram, "accuracy_vs_cost": accuracy_vs_cost, "bn_gamma": gamma_histogram}
    drawn = {name: make(record, out_dir) for name, make in makers.items()}
    return {name: path for name, path in drawn.items() if path is not None}
