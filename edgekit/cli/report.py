"""``edgekit report``: render a run's report again, or compare runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.core.errors import EdgekitError


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "report",
        help="render a run's report again from record.json alone, or compare runs (--compare)",
        epilog="examples:\n  edgekit report runs/20261201-local-default\n"
        "  edgekit report runs/a runs/b runs/c --compare --out runs/compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, nargs="+", help="run folder(s) holding record.json")
    p.add_argument(
        "--compare",
        action="store_true",
        help="one report across the runs: table + accuracy-vs-latency Pareto front (dominated runs marked)",
    )
    p.add_argument(
        "--out", type=Path, help="with --compare: folder for compare.md/.html (default: runs/compare)"
    )
    p.add_argument("--no-html", action="store_true", help="Markdown only")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    """Handle ``edgekit report``."""
    from edgekit.report.render import render_run

    if args.compare:
        from edgekit.report.compare import render_compare

        written = render_compare(args.run, args.out or Path("runs") / "compare", html=not args.no_html)
    elif len(args.run) > 1:
        raise EdgekitError(
            f"{len(args.run)} run folders given without --compare", "add --compare, or give one run"
        )
    else:
        written = render_run(args.run[0], html=not args.no_html)
    for path in written:
        print(path)
    return 0
