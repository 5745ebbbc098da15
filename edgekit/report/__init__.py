"""Run records (the lineage of a deploy), the flat summary, and the Markdown/HTML report with plots.

Example:
    >>> from edgekit.report import RunRecord, render_run  # doctest: +SKIP
    >>> render_run("runs/20250101-120000-local")  # doctest: +SKIP
"""

from edgekit.report.record import Gate, Node, RunRecord, latency_stats, node_id, now_iso
from edgekit.report.render import render_html, render_markdown, render_run
from edgekit.report.summary import build_summary, write_summary

__all__ = [
    "Gate",
    "Node",
    "RunRecord",
    "build_summary",
    "latency_stats",
    "node_id",
    "now_iso",
    "render_html",
    "render_markdown",
    "render_run",
    "write_summary",
]
