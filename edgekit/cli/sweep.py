"""``edgekit sweep``: a grid of deploys (models × recipes × targets × calibrators) on Ray."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgekit.cli.types import positive_int

_EPILOG = """examples:
  edgekit sweep sweeps/example.yaml                 4 items on this machine (an embedded Ray)
  edgekit sweep sweeps/example.yaml --dry-run       the items and boards, nothing run
  edgekit sweep nightly.yaml --fleet fleet.yaml     several boards per kind: one bench per board at once
  edgekit sweep nightly.yaml --address auto         on a running Ray cluster
  edgekit sweep nightly.yaml --name nightly-$(date +%F)   a fresh sweep (the same name resumes)

Each item is a deploy whose run folder is <out>/<sweep>-<item>; `edgekit history --sweep NAME` lists them,
`edgekit history dashboard` draws the grid with its Pareto front. Exit 0 when every item is ok, 3 when
one regressed against --baseline / the file's baseline, 1 when one failed."""


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of deploys (models x recipes x targets x calibrators) on Ray, one bench per board",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", type=Path, help="the sweep file (sweeps/example.yaml shows every key)")
    p.add_argument("--name", help="the sweep's name (default: the file's): the same name resumes")
    p.add_argument("--fleet", type=Path, help="a fleet file: several boards per kind (overrides the file's)")
    p.add_argument(
        "--address", help="a Ray cluster to run on (`auto`, or host:port); default: an embedded Ray"
    )
    p.add_argument("--cpus", type=positive_int, help="CPUs of the embedded Ray (default: all of this host's)")
    p.add_argument(
        "--max-parallel", type=positive_int, help="items in flight at most (default: as many as Ray's CPUs)"
    )
    p.add_argument("--out", type=Path, default=Path("runs"), help="the runs folder (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="print the items and boards as JSON and exit")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    """Handle ``edgekit sweep``."""
    from edgekit.core.errors import EdgekitError, GateError
    from edgekit.fleet.spec import load_fleet, load_sweep
    from edgekit.fleet.sweep import plan_sweep, run_sweep

    spec, fleet = load_sweep(args.sweep, args.name)
    if args.fleet:
        fleet = load_fleet(args.fleet)
    plan = plan_sweep(spec, fleet, args.out)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    print(f"sweep {spec.name}: {len(plan.items)} items on {len(plan.boards)} board(s); runs in {args.out}")
    result = run_sweep(
        plan, address=args.address, num_cpus=args.cpus, command=list(sys.argv), max_parallel=args.max_parallel
    )
    print(f"sweep {spec.name} took {result.wall_s:.0f} s; summary: {result.summary}")
    regressed = [i for i, r in result.items.items() if r.get("status") == "gates_failed"]
    failed = [i for i, r in result.items.items() if r.get("status") not in ("ok", "gates_failed")]
    if failed:
        raise EdgekitError(
            f"{len(failed)} of {len(result.items)} items did not finish: {', '.join(failed)}",
            f"see each run's report under {args.out}; `edgekit sweep {args.sweep}` again resumes the rest",
        )
    if regressed:
        detail = "; ".join(
            f"{i}: {', '.join(result.items[i].get('regressions') or ['a gate'])}" for i in regressed
        )
        raise GateError(
            f"{len(regressed)} item(s) regressed: {detail}",
            "see `edgekit history gate <run id>` for each; if the change is wanted, move the baseline",
        )
    return 0
