"""The history dashboard: one self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched).

Per target: mAP@0.5:0.95, p50/p99 latency and energy per inference across its runs in time order, each
point titled with its run, commit and value (hover). Emulator time is drawn apart and named so. Then the
newest runs, and each sweep's grid as one table with its Pareto front (highest mAP for the lowest p99;
board time and emulator time are never ranked together). A figure that was not measured is "—" and is
not drawn.
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from pathlib import Path

from edgekit.core.files import atomic_write_text
from edgekit.history.index import History, RunRow
from edgekit.report.templates import CSS, Heading, Paragraph, Table, html_block

NONE = "—"
_W, _H, _PAD = 520, 150, 56
_EXTRA_CSS = """
.charts { display: flex; flex-wrap: wrap; gap: .8rem; }
figure { margin: 0; } figcaption { font-size: .85rem; color: #4a5568; }
svg { background: #fbfdff; border: 1px solid #e2e8f0; }
svg text { font: 10px system-ui, sans-serif; fill: #4a5568; }
tr.front td { background: #f0fff4; }
"""
#: How many of a target's newest runs its charts show (the table and the index keep every run).
CHART_RUNS = 300


def _fmt(value: float | None, digits: int = 3) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def _chart(title: str, unit: str, series: dict[str, list[tuple[int, float, str]]], n: int) -> str:
    """An SVG line chart: ``series`` maps a name to (x index, y, hover text) points; x runs 0..n-1."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.05 or 1), hi + (abs(hi) * 0.05 or 1)

    def xy(i: int, y: float) -> tuple[float, float]:
        x = _PAD + (i / max(n - 1, 1)) * (_W - _PAD - 8)
        return x, _H - 18 - (y - lo) / (hi - lo) * (_H - 30)

    colours = ("#2b6cb0", "#c05621", "#2f855a")
    parts = [
        f'<svg width="{_W}" height="{_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="2" y="12">{hi:.4g}</text><text x="2" y="{_H - 18}">{lo:.4g}</text>',
        f'<text x="{_PAD}" y="{_H - 4}">oldest</text><text x="{_W - 40}" y="{_H - 4}">newest</text>',
    ]
    for k, (name, pts) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        coords = [xy(i, y) for i, y, _ in pts]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{path}"/>')
        for (x, y), (_, _, hover) in zip(coords, pts, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.4" fill="{colour}"><title>{html.escape(name)}: '
                f"{html.escape(hover)}</title></circle>"
            )
        parts.append(
            f'<text x="{_W - 150}" y="{12 + 11 * k}" style="fill:{colour}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    caption = f"{html.escape(title)} ({html.escape(unit)})" if unit else html.escape(title)
    return f"<figure>{''.join(parts)}<figcaption>{caption}</figcaption></figure>"


def _series(rows: list[RunRow], field: str, digits: int) -> list[tuple[int, float, str]]:
    out = []
    for i, r in enumerate(rows):
        value = getattr(r, field)
        if value is not None:
            commit = (r.git_commit or NONE)[:10]
            hover = f"{_fmt(value, digits)} · {r.run_id} · {r.created[:16]} · commit {commit}"
            out.append((i, float(value), hover))
    return out


def _target_section(target: str, rows: list[RunRow]) -> list[str]:
    rows = sorted(rows, key=lambda r: (r.created, r.run_id))[-CHART_RUNS:]
    n = len(rows)
    emulated = all(r.emulator for r in rows)
    time_name = "emulator time (not board time)" if emulated else "latency"
    p50, p99 = ("emulator_p50_ms", "emulator_p99_ms") if emulated else ("p50_ms", "p99_ms")
    charts = [
        _chart("mAP@0.5:0.95" if rows[-1].metric != "teacher_agreement" else "teacher agreement@0.5:0.95", "",
               {"deployed": _series(rows, "map50_95", 4)}, n),
        _chart(time_name, "ms", {"p50": _series(rows, p50, 2), "p99": _series(rows, p99, 2)}, n),
        _chart("energy per inference", "mJ", {"energy": _series(rows, "energy_mj", 3)}, n),
    ]  # fmt: skip
    drawn = [c for c in charts if c]
    energy = "" if any(r.energy_mj is not None for r in rows) else "; energy: not measured on this target"
    latest = rows[-1]
    return [
        html_block(Heading(f"{target}", 2)),
        html_block(Paragraph(
            f"{n} run{'s' if n != 1 else ''} shown; newest {latest.run_id} ({latest.status}), "
            f"board {latest.board}, backend {latest.backend} {latest.precision}{energy}",
            tone="note",
        )),
        f'<div class="charts">{"".join(drawn)}</div>',
    ]  # fmt: skip


def pareto_front(rows: list[RunRow]) -> set[str]:
    """The runs no other run of their target beats on both mAP (higher) and p99 (lower).

    Each target is ranked apart (its own device), and emulator time never with board time.

    Example:
        >>> a = RunRow("a", "a", "", "ok", map50_95=0.6, p99_ms=10.0)
        >>> b = RunRow("b", "b", "", "ok", map50_95=0.5, p99_ms=12.0)
        >>> sorted(pareto_front([a, b]))
        ['a']
    """
    front = set()
    for target, kind in {(r.target, bool(r.emulator)) for r in rows}:
        pts = [
            (r.run_id, r.map50_95, r.emulator_p99_ms if kind else r.p99_ms)
            for r in rows
            if r.target == target and bool(r.emulator) == kind
        ]
        pts = [(i, m, t) for i, m, t in pts if m is not None and t is not None]
        for i, m, t in pts:
            if not any(m2 >= m and t2 <= t and (m2 > m or t2 < t) for _, m2, t2 in pts):
                front.add(i)
    return front


def _sweep_section(sweep: str, rows: list[RunRow]) -> list[str]:
    front = pareto_front(rows)
    headers = ["model", "recipe", "target", "calibrator", "device", "status", "mAP@0.5:0.95", "p99 ms",
               "mJ/inference", "run", "Pareto"]  # fmt: skip
    body = []
    for r in sorted(rows, key=lambda r: (r.model or "", r.recipe or "", r.target or "", r.calibrator or "")):
        p99 = _fmt(r.p99_ms, 2) if not r.emulator else f"{_fmt(r.emulator_p99_ms, 1)} (emulator)"
        cells = [
            f"{(r.model or NONE).split(',')[0]} {(r.model_sha256 or '')[:8]}", r.recipe or NONE,
            r.target or NONE,
            r.calibrator or NONE, r.device or NONE, r.status, _fmt(r.map50_95, 4), p99, _fmt(r.energy_mj),
            r.run_id, "front" if r.run_id in front else "",
        ]  # fmt: skip
        css = ' class="front"' if r.run_id in front else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    done = sum(r.status == "ok" for r in rows)
    return [
        html_block(Heading(f"Sweep {sweep}", 3)),
        html_block(
            Paragraph(
                f"{len(rows)} items, {done} ok; green rows are each target's Pareto front (highest mAP for "
                "the lowest p99 on that target's device)",
                tone="note",
            )
        ),
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>",
    ]


def render_dashboard(history: History, *, newest: int = 50, sweeps: int = 10) -> str:
    """The dashboard page of ``history`` as HTML (after a sync with the run folders)."""
    rows = history.runs()
    parts = [
        html_block(Heading("edgekit run history", 1)),
        html_block(Paragraph(
            f"{len(rows)} runs in {history.root}, generated {time.strftime('%Y-%m-%d %H:%M')}. Figures are "
            f"the run folders' summary.json; {NONE} = not measured. Hover a point for its run and commit.",
            tone="note",
        )),
    ]  # fmt: skip
    if not rows:
        parts.append(html_block(Paragraph("no runs yet: `edgekit deploy` writes them", tone="note")))
    by_target: dict[str, list[RunRow]] = defaultdict(list)
    by_sweep: dict[str, list[RunRow]] = defaultdict(list)
    for r in rows:
        by_target[r.target or NONE].append(r)
        if r.sweep:
            by_sweep[r.sweep].append(r)
    if by_sweep:
        parts.append(html_block(Heading("Sweeps", 2)))
        for sweep in sorted(by_sweep, key=lambda s: max(r.created for r in by_sweep[s]), reverse=True)[
            :sweeps
        ]:
            parts += _sweep_section(sweep, by_sweep[sweep])
    for target in sorted(by_target, key=lambda t: by_target[t][0].created, reverse=True):
        parts += _target_section(target, by_target[target])
    table = Table(
        ["run", "when", "status", "target", "device", "recipe", "mAP@0.5:0.95", "p99 ms", "commit"],
        [
            [
                r.run_id,
                r.created[:16].replace("T", " "),
                r.status,
                r.target or NONE,
                r.device or NONE,
                r.recipe or NONE,
                _fmt(r.map50_95, 4),
                _fmt(r.p99_ms, 2) if not r.emulator else f"{_fmt(r.emulator_p99_ms, 1)} (emulator)",
                (r.git_commit or NONE)[:10],
            ]
            for r in rows[:newest]
        ],  # fmt: skip
        frozenset({6, 7}),
    )
    parts += [html_block(Heading(f"Newest {min(newest, len(rows))} runs", 2)), html_block(table)]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>edgekit run history</title>\n<style>{CSS}{_EXTRA_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_dashboard(history: History, out: str | Path) -> Path:
    """Write the dashboard to ``out`` atomically and return its path."""
    return atomic_write_text(Path(out), render_dashboard(history))
