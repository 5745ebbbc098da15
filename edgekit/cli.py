"""The ``edgekit`` command. Thin: parse, build a request or plan, run it, print.

Errors a user can cause print ``error:`` and ``hint:`` and exit non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from edgekit import __version__
from edgekit.cli_types import non_negative_float, positive_float, positive_int
from edgekit.errors import EdgekitError

#: Every backend's calibration methods (the plan checks the target backend has the one asked for).
CALIBRATORS = ["default", "auto", "minmax", "entropy", "percentile", "kl", "ema", "aciq"]

DEPLOY_EPILOG = """examples:
  edgekit deploy --target local                      # the built-in detector and data, this host as the device
  edgekit deploy --target local --recipe slim --max-map-drop 2.0
  edgekit deploy --target local --model yolo.onnx --recipe none --data my-dataset/
  edgekit deploy --target local --calibrator auto --max-drop 0.5   # every calibrator tried on the device
  edgekit deploy --target local --dry-run            # show the plan, run nothing
"""


def _add_deploy(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="compress → export → quantize → build → bench → report, one run folder",
        description="Take a detector to a measured deployment on a target, in one run folder "
        "(runs/<id>/ with record.json, summary.json, report.md, report.html).",
        epilog=DEPLOY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target", "-t", default="local", help="target name, alias or YAML path (see `edgekit targets`)"
    )
    p.add_argument(
        "--model",
        "-m",
        default="builtin",
        help="'builtin' (reference detector), an .onnx file, or module:factory (with --weights)",
    )
    p.add_argument("--weights", help="state dict for a module:factory model")
    p.add_argument(
        "--head",
        choices=["yolov5", "yolov8", "yolox"],
        help="output layout of an ONNX model (default: detect)",
    )
    p.add_argument("--recipe", "-r", default="default", help="compression recipe name or YAML (recipes/)")
    p.add_argument(
        "--calib", help="calibration set NAME or NAME@vK (default: made from the dataset's calib split)"
    )
    p.add_argument("--calib-root", default="calibration", type=Path, help="folder of calibration sets")
    p.add_argument(
        "--calibrator",
        choices=CALIBRATORS,
        help="INT8 calibration method (overrides the recipe). Each backend has its own: onnxruntime "
        "minmax|entropy|percentile, mnn kl|ema, ncnn kl|aciq; 'default' = the backend's first; 'auto' "
        "builds every method, measures each on the target and keeps the cheapest within --max-drop "
        "(onnxruntime then also keeps the most sensitive layers in float)",
    )
    p.add_argument(
        "--max-drop",
        type=non_negative_float,
        metavar="PT",
        help="for --calibrator auto: mAP@0.5:0.95 points INT8 may lose against the FP32 model it quantizes "
        "(the compressed one; default: the recipe's, 1.0)",
    )
    p.add_argument("--data", help="YOLO-format dataset folder (default: built-in procedural shapes set)")
    p.add_argument(
        "--device", choices=["local"], help="run the target's artifact on this host instead of the board"
    )
    p.add_argument("--out", default="runs", type=Path, help="folder that receives the run folder")
    p.add_argument("--run-id", help="name of the run folder (default: time-target-recipe)")
    p.add_argument(
        "--max-map-drop",
        type=non_negative_float,
        metavar="PT",
        help="gate: fail if mAP@0.5:0.95 drops more than PT points vs the FP32 reference",
    )
    p.add_argument(
        "--max-p99-ms", type=positive_float, metavar="MS", help="gate: fail if p99 latency exceeds MS"
    )
    p.add_argument(
        "--epochs-scale", type=positive_float, default=1.0, help="scale every training schedule (quick tries)"
    )
    p.add_argument(
        "--reference",
        choices=("converged", "quick"),
        default="converged",
        help="the built-in model: converged (shipped for the built-in data; else trained to a plateau, "
        "tens of minutes, once) or quick (10 epochs, not converged)",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="also train the recipe's control - its compressed architecture from scratch for the "
        "reference's + the recipe's epochs - and report recipe - control (about doubles a cold run; cached)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    """Handle ``edgekit deploy``."""
    from edgekit.pipeline import DeployRequest, make_plan, run_plan

    req = DeployRequest(
        target=args.target,
        model=args.model,
        weights=args.weights,
        head=args.head,
        recipe=args.recipe,
        calib=args.calib,
        calibrator=args.calibrator,
        max_drop=args.max_drop,
        data=args.data,
        device=args.device,
        out=args.out,
        run_id=args.run_id,
        calib_root=args.calib_root,
        max_map_drop=args.max_map_drop,
        max_p99_ms=args.max_p99_ms,
        epochs_scale=args.epochs_scale,
        reference=args.reference,
        control=args.control,
        progress=not args.quiet,
    )
    plan = make_plan(req)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    try:
        run_dir = run_plan(plan)
    except EdgekitError as exc:
        _print_summary_if_any(exc)
        raise
    _print_summary(run_dir)
    return 0


def _print_summary_if_any(exc: EdgekitError) -> None:
    from edgekit.errors import GateError

    if isinstance(exc, GateError):
        run_dir = Path(exc.message.rsplit(" ", 1)[-1])
        if (run_dir / "summary.json").exists():
            _print_summary(run_dir)


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
    table.add_row("mAP@0.5", _fmt(ref["map50"]), _fmt(dep["map50"]))
    table.add_row("mAP@0.5:0.95", _fmt(ref["map50_95"]), _fmt(dep["map50_95"]))
    table.add_row("latency p50 / p99", "", f"{_fmt(lat['p50'], 2)} / {_fmt(lat['p99'], 2)} ms")
    table.add_row("FPS", "", _fmt(s["fps"], 1))
    table.add_row(
        "power / energy",
        "",
        f"{_fmt(s['power_w'], 2, unit=' W')} / {_fmt(s['energy_mj_per_inference'], 2, unit=' mJ')}",
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


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build",
        help="build one artifact (+ artifact.json) from an ONNX model",
        description=(
            "Build one artifact for a runtime. INT8 is judged by its detections: the artifact's decoded,\n"
            "NMS'd detections on the check images (the calibration images) must keep >= 95 % of FP32's\n"
            "with a mean score error <= 0.05, or the build is refused and nothing is written."
        ),
        epilog="examples:\n"
        "  edgekit build --backend onnxruntime --precision int8 --onnx yolov8n.onnx --calib street "
        "--out build/m\n"
        "  edgekit build -b ncnn -p int8 --onnx yolov8n.onnx --calib street --calibrator auto --out build/n\n"
        "  edgekit build -b onnxruntime -p int8 --onnx yolox.onnx --head yolox --std 0.00392157 "
        "--channel-order BGR --calib street --out build/x   # YOLOX: raw rows, 0..255 BGR input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", "-b", required=True, help="backend name (see `edgekit doctor`)")
    p.add_argument("--precision", "-p", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--onnx", required=True, type=Path, help="FP32 ONNX (int8: a QDQ ONNX, or give --calib)")
    p.add_argument("--calib", help="calibration set to quantize an FP32 ONNX for int8")
    p.add_argument("--calib-root", default="calibration", type=Path)
    p.add_argument(
        "--calibrator",
        "--method",
        dest="method",
        default="default",
        choices=CALIBRATORS,
        help="int8 calibration method of the backend. default: its methods in order, the first whose "
        "detections match FP32's on the check images; auto: every method, the one keeping the most "
        "detections (refused past --max-drop); or one method by name",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=5.0,
        metavar="PT",
        help="for --calibrator auto: percentage points of FP32's detections the INT8 model may lose "
        "on the check images (default: 5)",
    )
    p.add_argument(
        "--head", choices=["yolov5", "yolov8", "yolox"], help="output layout (default: read from the model)"
    )
    p.add_argument(
        "--mean",
        type=_triple,
        help="per-channel mean on 0..1 (default 0,0,0: Ultralytics' pixels / 255)",
    )
    p.add_argument(
        "--std",
        type=_triple,
        help="per-channel std on 0..1; 0.00392157 feeds 0..255 pixels (YOLOX's own exports)",
    )
    p.add_argument(
        "--channel-order", choices=["RGB", "BGR"], help="channel order the model takes (default RGB)"
    )
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--out", required=True, type=Path, help="artifact folder to create")
    p.set_defaults(func=cmd_build)


def _triple(text: str) -> tuple[float, float, float]:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` -> three floats (argparse type)."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give one value or three, comma-separated")
    return (parts[0], parts[1], parts[2])


def cmd_build(args) -> int:
    """Handle ``edgekit build``."""
    from edgekit.build import build_artifact

    artifact = build_artifact(
        args.backend,
        args.precision,
        args.onnx,
        args.out,
        calib=args.calib,
        calib_root=args.calib_root,
        method=args.method,
        head=args.head,
        threads=args.threads,
        max_drop=args.max_drop,
        preprocess={
            k: v
            for k, v in (("mean", args.mean), ("std", args.std), ("channel_order", args.channel_order))
            if v is not None
        },
    )
    _print_agreement(artifact)
    print(f"built {artifact.dir} ({', '.join(sorted(artifact.meta.get('sha256', {})))})")
    return 0


def _print_agreement(artifact) -> None:
    """One line on how the artifact's detections compare with FP32's (the build's check)."""
    figures = (artifact.meta.get("parity") or {}).get("detections")
    search = artifact.meta.get("calibration_search") or []
    for tried in search[:-1] if len(search) > 1 else []:
        if "error" in tried:
            print(f"calibrator {tried['method']}: refused ({tried['error']})")
    if figures and figures.get("kept") is not None:
        print(
            f"agreement with FP32 on {figures['images']} check images: {figures['kept']:.1%} of "
            f"{figures['detections']} detections kept, mean score error {figures['score_error']}, "
            f"box IoU {figures['box_iou']}"
        )


def _add_bench(sub) -> None:
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
    summary = json.loads((run_dir / "summary.json").read_text())
    if args.json:
        print(json.dumps({**summary, "run_dir": str(run_dir)}, indent=2))
        return 0
    bench = RunRecord.load(run_dir / "record.json").node("bench")
    lat = summary["latency_ms"]
    print(
        f"{bench.metrics['latency_ms']['n']} runs: p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f}, "
        f"p99 {lat['p99']:.3f} ms, {summary['fps']:.1f} FPS; power: {bench.extra['power_note']}"
    )
    if summary["deployed"].get("map50_95") is not None:
        print(f"mAP@0.5:0.95 from the device's outputs: {summary['deployed']['map50_95']:.4f}")
    for flag in bench.extra.get("throttling") or []:
        print(f"warning: {flag}")
    print(f"run folder: {run_dir}")
    return 0


def _add_report(sub) -> None:
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


def _add_info(sub) -> None:
    p = sub.add_parser("targets", help="list the boards edgekit knows")
    p.set_defaults(func=cmd_targets)
    p = sub.add_parser("doctor", help="runtimes installed here and what each extra adds")
    p.set_defaults(func=cmd_doctor)


def cmd_targets(args) -> int:
    """Handle ``edgekit targets``."""
    from rich.table import Table

    from edgekit.config import all_targets
    from edgekit.registry import BACKENDS

    status = {e.name: e.status for e in BACKENDS.available()}
    table = Table(title="targets (targets/*.yaml)")
    for col in ("name", "aliases", "backend", "precision", "input", "connection", "backend status"):
        table.add_column(col)
    for t in all_targets().values():
        table.add_row(
            t.name,
            ", ".join(t.aliases),
            t.backend,
            t.precision,
            str(t.input_size),
            t.connection.type,
            status.get(t.backend, "unknown"),
        )
    _console().print(table)
    return 0


def cmd_doctor(args) -> int:
    """Handle ``edgekit doctor``."""
    from rich.markup import escape
    from rich.table import Table

    from edgekit.registry import BACKENDS

    table = Table(title="backends")
    for col in ("backend", "status", "extra to install"):
        table.add_column(col)
    for e in BACKENDS.available():
        # escape: rich would read "[mnn]" as markup and print "pip install 'edgekit'"
        table.add_row(e.name, e.status, escape(f"pip install 'edgekit[{e.extra}]'") if e.extra else "-")
    _console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``edgekit`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Take a trained object detector to a measured deployment on edge hardware.",
        epilog="start here:  edgekit deploy --target local   (then open the report it prints)",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_deploy(sub)
    _add_optional(sub, "edgekit.compress.commands")
    _add_build(sub)
    _add_bench(sub)
    _add_optional(sub, "edgekit.predict_commands")
    _add_optional(sub, "edgekit.calib.commands")
    _add_optional(sub, "edgekit.models.commands")
    _add_report(sub)
    _add_info(sub)
    return parser


def _add_optional(sub, module: str) -> None:
    import importlib

    importlib.import_module(module).add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgekit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept in the run folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
