"""``edgekit deploy``: one run, compress to report, then its summary table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekit.cli.output import _print_summary
from edgekit.cli.types import CALIBRATORS, non_negative_float, positive_float
from edgekit.core.errors import EdgekitError

DEPLOY_EPILOG = """examples:
  edgekit deploy --target local                      # the built-in detector and data, this host as the device
  edgekit deploy --target local --recipe slim --max-map-drop 2.0
  edgekit deploy --target local --model yolo.onnx --images photos/   # prune + distil your detector, no labels
  edgekit deploy --target local --model yolo.onnx --recipe none --data my-dataset/
  edgekit deploy --target local --calibrator auto --max-drop 0.5   # every calibrator tried on the device
  edgekit deploy --target local --dry-run            # show the plan, run nothing
  edgekit deploy --target rpi4-ncnn --device sim     # on an emulated Pi 4 (qemu Cortex-A72) over SSH
"""


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
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
        "--images",
        metavar="DIR",
        help="for your own --model without labels: a folder of its kind of images (at least 40); 4 in 5 "
        "train the distillation after pruning, 1 in 5 is held back to measure teacher agreement (mAP of the "
        "compressed model's detections against the original's). Default: the built-in images",
    )
    p.add_argument(
        "--device",
        choices=["local", "sim"],
        help="local: run the target's artifact on this host instead of the board; sim: on an emulated "
        "board of the target's kind (rpi4: Cortex-A72, rk3588: Cortex-A76) over SSH, started if needed "
        "(its time is emulator time, not board time)",
    )
    p.add_argument(
        "--check-on",
        choices=["rpi4", "rk3588"],
        help="run the build's checks on an emulated ARM board with its runtime's own kernels, where the "
        "backend can (MNN); --device sim does so on the target's board",
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
        "--baseline",
        metavar="RUN",
        help="gate against history: compare with `last` (the last ok run of the same target, board, model, "
        "recipe and calibration set), a run id (`edgekit history`), or a git ref's run; fail on a regression",
    )
    p.add_argument(
        "--baseline-map-drop",
        type=non_negative_float,
        default=0.5,
        metavar="PT",
        help="with --baseline: mAP@0.5:0.95 points the run may lose against it (default 0.5)",
    )
    p.add_argument(
        "--baseline-p99-rise",
        type=non_negative_float,
        default=10.0,
        metavar="PCT",
        help="with --baseline: percent the p99 latency may rise; a rise within 2x the measured latency "
        "spread is noise and passes (default 10)",
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
        images=args.images,
        device=args.device,
        check_on=args.check_on,
        out=args.out,
        run_id=args.run_id,
        calib_root=args.calib_root,
        max_map_drop=args.max_map_drop,
        max_p99_ms=args.max_p99_ms,
        baseline=args.baseline,
        baseline_map_drop=args.baseline_map_drop,
        baseline_p99_rise=args.baseline_p99_rise,
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
    from edgekit.core.errors import GateError

    if isinstance(exc, GateError):
        run_dir = Path(exc.message.rsplit(" ", 1)[-1])
        if (run_dir / "summary.json").exists():
            _print_summary(run_dir)
