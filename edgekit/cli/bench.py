"""``edgekit bench``: measure a built artifact on a target's device."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgekit.cli.types import positive_int


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "bench",
        help="measure a built artifact on a target's device; writes a run folder with its report",
        description=(
            "Push an artifact to the target's device (over SSH for a board), sample power there, take an "
            "idle baseline, time it (warm-up until latency settles, then >= iterations and >= min seconds), "
            "check its output against the host's on a fixed input, and write record.json, summary.json and "
            "report.md/html. With --data the dataset's val split is run on the device and scored there."
        ),
        epilog="example: edgekit bench --target rk3588-mnn --artifact runs/<id>/build --data datasets/shapes",
    )
    p.add_argument(
        "--target", "-t", default="local", help="target name or YAML (its backend must be the artifact's)"
    )
    p.add_argument("--artifact", "-a", required=True, type=Path, help="artifact folder (holds artifact.json)")
    p.add_argument(
        "--data", type=Path, help="YOLO dataset folder: its val split gives mAP from the device's outputs"
    )
    p.add_argument("--device", choices=["local"], help="run on this host instead of the target's board")
    p.add_argument("--iterations", type=positive_int, help="override the target's timed iterations")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run folder (default runs/)")
    p.add_argument("--run-id", help="run folder name (default <time>-<target>-bench)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    """Handle ``edgekit bench``."""
    from edgekit.bench_run import bench_run
    from edgekit.report.record import RunRecord
    from edgekit.report.summary import Summary

    run_dir = bench_run(
        args.target,
        args.artifact,
        data=args.data,
        device=args.device,
        iterations=args.iterations,
        out=args.out,
        run_id=args.run_id,
        command=sys.argv,
        progress=not args.json,
    )
    summary = Summary.model_validate_json((run_dir / "summary.json").read_text())
    if args.json:
        print(json.dumps({**summary.model_dump(mode="json"), "run_dir": str(run_dir)}, indent=2))
        return 0
    bench = RunRecord.load(run_dir / "record.json").node("bench")
    lat = summary.latency_ms
    print(
        f"{bench.metrics['latency_ms']['n']} runs: p50 {lat.p50:.3f} ms, p90 {lat.p90:.3f}, "
        f"p99 {lat.p99:.3f} ms, {summary.fps:.1f} FPS; power: {bench.extra['power_note']}"
    )
    if summary.deployed.map50_95 is not None:
        print(f"mAP@0.5:0.95 from the device's outputs: {summary.deployed.map50_95:.4f}")
    for flag in bench.extra.get("throttling") or []:
        print(f"warning: {flag}")
    print(f"run folder: {run_dir}")
    return 0
