"""``edgekit compress --model M --recipe R --out D``: compression only, with a per-step record."""

from __future__ import annotations

import argparse
import io
import uuid
from pathlib import Path

import torch

from edgekit.cli.types import positive_float
from edgekit.compress.inputs import build_context, load_model

_EPILOG = """examples:
  edgekit compress --model builtin --recipe default --out runs/compress-default
  edgekit compress --model runs/x/model.pt --recipe slim --out runs/slim --epochs-scale 0.5

  edgekit compress --model yolov8n.onnx --images photos/ --out runs/mine   # your detector, no labels

MODEL is "builtin" (the cached reference detector on the built-in shapes set), a .pt saved by edgekit, or
a float YOLO-family .onnx: it is imported as a torch module, pruned with its prediction convs kept whole,
recovered by distillation from the unpruned model, and written back as model.onnx with the same input
and output names. Without --data its metric is teacher agreement (mAP against its own FP32 detections on
held-back images), never called mAP.
RECIPE is a name from recipes/ or a path to a .yaml. The folder gets model.pt, record.json and one
step_<i>.pt per finished step; running the same command again resumes after the last finished step."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compress`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "compress",
        help="run a compression recipe on a model",
        description="Prune / swap / distil / QAT a detector with a recipe, step by step.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="builtin",
        help='"builtin", a .pt saved by edgekit, or your float YOLO-family .onnx (its compressed form is '
        "written back as model.onnx with its own input / output names; default: builtin)",
    )
    p.add_argument("--recipe", default="default", help="recipe name or .yaml path (default: default)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--data", type=Path, default=None, help="YOLO dataset root (default: the built-in shapes set)"
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="for an .onnx model without labels: a folder of its kind of images (>= 40; 1 in 5 held back)",
    )
    p.add_argument("--head", choices=["yolov5", "yolov8", "yolox"], help="an .onnx model's output layout")
    p.add_argument(
        "--epochs-scale", type=positive_float, default=1.0, help="multiply every epoch count of the recipe"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)
    return p


def cmd_compress(args: argparse.Namespace) -> int:
    """``edgekit compress``: run the recipe, save ``model.pt`` and ``record.json``, print a step table."""
    from edgekit.compress.recipe import load_recipe
    from edgekit.compress.runner import run_recipe
    from edgekit.core.files import atomic_write_bytes
    from edgekit.report.record import RunRecord

    recipe = load_recipe(args.recipe)  # validated (order, keys) before any data or model is touched
    foreign, metric = str(args.model).endswith(".onnx"), "map"
    if foreign:
        from edgekit.compress.inputs import foreign_context
        from edgekit.pipeline import check_foreign_steps

        check_foreign_steps(recipe)
        model, ctx, metric = foreign_context(
            Path(args.model), args.data, args.images, args.out / "steps", args.epochs_scale, not args.quiet,
            head=args.head,
        )  # fmt: skip
    else:
        root = args.data
        if root is None:
            from edgekit.data.shapes import ShapesConfig, builtin_dataset
            from edgekit.models.zoo import cache_dir

            root = builtin_dataset(cache_dir(), ShapesConfig(), progress=not args.quiet)
        model = load_model(args.model, root, progress=not args.quiet)
        ctx = build_context(root, args.out / "steps", args.epochs_scale, not args.quiet)
    record = RunRecord.new(
        uuid.uuid4().hex[:12],
        ["edgekit", "compress", "--recipe", args.recipe],
        {},
        recipe.model_dump(mode="json"),
    )
    model, nodes = run_recipe(model, recipe, ctx, record)
    buf = io.BytesIO()
    torch.save(model, buf)
    atomic_write_bytes(args.out / "model.pt", buf.getvalue())
    if foreign:  # the user's own input / output names; after QAT its QDQ form beside the float one
        from edgekit.compress.qat import export_qdq, float_view
        from edgekit.models.foreign import export_foreign

        floating = float_view(model)  # a copy without fake quantization after QAT, else the model itself
        export_foreign(floating, args.out / "model.onnx")
        if floating is not model:
            export_qdq(model, model.input_shape, args.out / "model_int8.onnx")
    record.status = "ok"
    record.save(args.out / "record.json")
    _print_table(nodes, ctx.log, metric)
    return 0


def _print_table(nodes: list[dict], log: list[str], metric: str = "map") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="compression steps")
    name = "agreement" if metric == "teacher_agreement" else "mAP"
    for col in ("stage", "label", "params", "MACs", f"{name}50", f"{name}50-95", "s", "cached"):
        table.add_column(col)
    for n in nodes:
        m, b = n["metrics"], n["extra"].get("before", {})
        table.add_row(
            n["stage"],
            n["label"],
            f"{b.get('params', 0)} -> {m['params']}",
            f"{b.get('macs', 0) / 1e6:.1f}M -> {m['macs'] / 1e6:.1f}M",
            f"{b.get('map50', 0):.3f} -> {m['map50']:.3f}",
            f"{b.get('map50_95', 0):.3f} -> {m['map50_95']:.3f}",
            str(n["seconds"]),
            "yes" if n["cached"] else "no",
        )
    console = Console()
    console.print(table)
    for line in log:
        console.print(line, style="dim")
    if metric == "teacher_agreement":
        console.print(
            "agreement: mAP of the model's detections against the unpruned model's own (score >= 0.25) on "
            "held-back images; no labels were given, so it is not the model's accuracy",
            style="dim",
        )
