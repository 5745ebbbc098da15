"""What the commands print: the run summary table, on a console wide enough for logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    return "not measured" if value is None else f"{value * scale:.{digits}f}{unit}"


def _print_summary(run_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = json.loads((run_dir / "summary.json").read_text())
    ref, dep, lat = s["reference"], s["deployed"], s["latency_ms"]
    table = Table(title=f"{s['target']} · {s['backend']} {s['precision']} · recipe {s['recipe']}")
    for col in ("", "reference (FP32, host)", "deployed (device)"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("params", _fmt(ref["params"], 0), _fmt(dep["params"], 0))
    table.add_row("MACs (M)", _fmt(ref["macs"], 1, 1e-6), _fmt(dep["macs"], 1, 1e-6))
    table.add_row("artifact", "", _fmt(dep["artifact_bytes"], 1, 1e-3, " kB"))
    agreement = s.get("metric") == "teacher_agreement"
    name = "teacher agreement" if agreement else "mAP"
    table.add_row(f"{name}@0.5", _fmt(ref["map50"]), _fmt(dep["map50"]))
    table.add_row(f"{name}@0.5:0.95", _fmt(ref["map50_95"]), _fmt(dep["map50_95"]))
    table.add_row("latency p50 / p99", "", f"{_fmt(lat['p50'], 2)} / {_fmt(lat['p99'], 2)} ms")
    emu = s.get("emulator_time_ms")
    if s.get("emulator") and emu:
        table.add_row(
            f"emulator time p50 / p99 ({s['emulator']})",
            "",
            f"{_fmt(emu['p50'], 1)} / {_fmt(emu['p99'], 1)} ms",
        )
    table.add_row("FPS", "", _fmt(s["fps"], 1))
    table.add_row(
        "power / energy",
        "",
        f"{_fmt(s['power_w'], 2, unit=' W')} / {_fmt(s['energy_mj_per_inference'], 2, unit=' mJ')}",
    )
    if agreement:
        table.caption = (
            "teacher agreement: mAP of the detections against the FP32 original's own, on held-back images "
            "(no labels were given: not the model's accuracy)"
        )
    if s.get("emulator"):
        table.caption = (table.caption + "; " if table.caption else "") + (
            f"emulated board ({s['emulator']}): its ARM kernels made the outputs, its time is not board time"
        )
    for name, gate in (s.get("gates") or {}).items():
        table.add_row(
            f"gate {name}",
            f"limit {gate['limit']}",
            f"{gate['value']} → " + ("pass" if gate["passed"] else "FAIL"),
        )
    console = _console()
    console.print(table)
    for warning in _latency_warnings(run_dir):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"report: {run_dir / 'report.html'}  (record: {run_dir / 'record.json'})")


def _latency_warnings(run_dir: Path) -> list[str]:
    from edgekit.report.record import RunRecord, latency_warnings

    bench = RunRecord.load(run_dir / "record.json").node("bench")
    return latency_warnings(bench.extra.get("latencies_ms") or []) if bench else []


def _console():
    """A rich console; wide when output is not a terminal so tables in logs and pipes don't wrap."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)
