"""``edgekit history``: the run history (every run folder under ``runs/``), its gates and its dashboard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekit.cli.types import non_negative_float, positive_int

_EPILOG = """examples:
  edgekit history                                   the newest runs under runs/
  edgekit history --target rpi4-ncnn --limit 50     one target's runs
  edgekit history gate <run id> --baseline last     a run against the last ok run of its item
                                                    (exit 3 on a regression)
  edgekit history gate <run id> --baseline v0.1.0   ... against the run made from a git ref
  edgekit history dashboard                         runs/dashboard.html: figures over time, sweeps' grids
  edgekit history rebuild                           index every run folder afresh

The run folders are the truth; the index (runs/history.sqlite) follows them on every read and is rebuilt
from them when it is lost or damaged."""


def _runs_option(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--runs", type=Path, default=default, help="the runs folder deploys write to (default: runs)"
    )


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "history",
        help="list and filter past runs, gate a run against its baseline, render the history dashboard",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _runs_option(p, Path("runs"))
    p.add_argument("--target", help="only this target's runs (its name, e.g. rpi4-ncnn)")
    p.add_argument("--board", help="only runs on this board kind (a target's board:, e.g. rk3588)")
    p.add_argument("--recipe", help="only runs of this recipe")
    p.add_argument("--status", choices=("ok", "failed", "gates_failed", "interrupted", "running"))
    p.add_argument("--sweep", help="only the items of this sweep")
    p.add_argument("--model", metavar="SHA", help="only runs of the model whose sha256 starts with SHA")
    p.add_argument("--since", metavar="DATE", help="only runs made on or after DATE (2026-12-01)")
    p.add_argument("--limit", type=positive_int, default=20, help="how many runs, newest first (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON lines (one run each) instead of a table")
    p.set_defaults(func=cmd_list)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")

    g = verbs.add_parser(
        "gate",
        help="compare a run with its baseline; exit 3 when a figure regressed beyond its tolerance",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A p99 rise fails only above --p99-rise percent AND above 2x the larger latency standard "
        "deviation\nthe two benches measured. Emulator time is never compared.",
    )
    g.add_argument("run", help="the run id (a folder name under --runs)")
    _runs_option(g, argparse.SUPPRESS)
    g.add_argument(
        "--baseline",
        default="last",
        metavar="RUN",
        help="last (default: the last ok run of the same target, board, model, recipe and calibration set), "
        "a run id, or a git ref",
    )
    g.add_argument("--map-drop", type=non_negative_float, default=0.5, metavar="PT",
                   help="mAP@0.5:0.95 points the run may lose (default 0.5)")  # fmt: skip
    g.add_argument("--p99-rise", type=non_negative_float, default=10.0, metavar="PCT",
                   help="percent the p99 latency may rise (default 10)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print the verdict as JSON")
    g.set_defaults(func=cmd_gate)

    d = verbs.add_parser("dashboard", help="write the history dashboard (one HTML file)")
    _runs_option(d, argparse.SUPPRESS)
    d.add_argument("--out", type=Path, help="where the page goes (default: <runs>/dashboard.html)")
    d.set_defaults(func=cmd_dashboard)

    r = verbs.add_parser("rebuild", help="index every run folder afresh (the folders are the truth)")
    _runs_option(r, argparse.SUPPRESS)
    r.set_defaults(func=cmd_rebuild)


def _history(args):  # noqa: ANN202
    from edgekit.core.errors import ConfigError
    from edgekit.history.index import History

    if not args.runs.is_dir():
        raise ConfigError(f"no runs folder at {args.runs}", "give the folder deploys write to with --runs")
    return History(args.runs)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_list(args) -> int:
    """Handle ``edgekit history``: the newest runs matching the filters."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    history = _history(args)
    rows = history.runs(
        target=args.target, board=args.board, recipe=args.recipe, status=args.status, sweep=args.sweep,
        model=args.model, since=args.since, limit=args.limit,
    )  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return 0
    probe = Console()
    console = Console(width=probe.width if probe.is_terminal else 220)  # logs and pipes: no wrapped ids
    if history.rebuilt:
        console.print(f"[yellow]index rebuilt from the run folders: {history.rebuilt}[/]")
    if not rows:
        console.print(f"no runs in {args.runs} match" if history.count() else f"no runs in {args.runs} yet")
        return 0
    table = Table(title=f"runs in {args.runs} (newest first; '-' = not measured)")
    for col in ("run", "when", "status", "target", "device", "recipe", "model", "mAP@.5:.95", "p50 ms",
                "p99 ms", "mJ/inf", "commit"):  # fmt: skip
        right = col.endswith(("ms", "95", "inf"))
        table.add_column(col, justify="right" if right else "left", no_wrap=col in ("run", "when"))
    for r in rows:
        p50, p99 = (r.p50_ms, r.p99_ms) if not r.emulator else (r.emulator_p50_ms, r.emulator_p99_ms)
        mark = " (emu)" if r.emulator else ""
        table.add_row(
            r.run_id, r.created[:16].replace("T", " "), r.status, r.target or "-", r.device or "-",
            r.recipe or "-", (r.model_sha256 or "-")[:10], _fmt(r.map50_95, 4),
            _fmt(p50, 2) + mark, _fmt(p99, 2) + mark, _fmt(r.energy_mj, 3), (r.git_commit or "-")[:10],
        )  # fmt: skip
    console.print(table)
    if any(r.emulator for r in rows):
        console.print("(emu): emulator time on an emulated board, not board time")
    return 0


def cmd_gate(args) -> int:
    """Handle ``edgekit history gate``: exit 3 when the run regressed against its baseline."""
    from edgekit.core.errors import GateError
    from edgekit.history.gates import Tolerances, gate_run

    history = _history(args)
    verdict = gate_run(history, args.run, args.baseline, Tolerances(args.map_drop, args.p99_rise))
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=1))
    else:
        print("\n".join(verdict.lines()))
    if verdict.regressions:
        names = ", ".join(c.gate for c in verdict.regressions)
        raise GateError(
            f"{args.run} regressed against {verdict.baseline_id}: {names}",
            "see the lines above; if the change is wanted, raise --map-drop / --p99-rise or pick --baseline",
        )
    return 0


def cmd_dashboard(args) -> int:
    """Handle ``edgekit history dashboard``."""
    from edgekit.history.dashboard import write_dashboard

    history = _history(args)
    out = write_dashboard(history, args.out or args.runs / "dashboard.html")
    print(out)
    return 0


def cmd_rebuild(args) -> int:
    """Handle ``edgekit history rebuild``."""
    history = _history(args)
    print(f"indexed {history.rebuild()} runs into {history.path}")
    return 0
