"""Compression benchmark (issue 5): each recipe vs the reference, beside a same-size model from scratch.

One run on the hard shapes set with the reference detector of ``make deploy TARGET=local``
(``builtin_dataset`` with the default ShapesConfig, ``reference_detector(root, reference_train_config())``).
For each recipe: params and MACs ratios vs the reference and mAP deltas (torch, FP32 or fake-quant for QAT;
PTQ is the pipeline's job and not part of this table), and the control: a TinyYolo whose width gives
about the same params, trained from scratch for the reference's epochs plus the recipe's own training
epochs (equal compute in optimiser steps). Prints a Markdown table and writes
``bench/results/compression.json`` (``compression-quick.json`` with ``--quick``).

    .venv/bin/python bench/compression.py            # full run, 30-60 min on 2 cores
    .venv/bin/python bench/compression.py --quick    # smoke check (~5 min), numbers not meaningful
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.compress.commands import build_context  # noqa: E402
from edgekit.compress.context import measure  # noqa: E402
from edgekit.compress.recipe import load_recipe  # noqa: E402
from edgekit.compress.runner import run_recipe  # noqa: E402
from edgekit.data.shapes import ShapesConfig, builtin_dataset  # noqa: E402
from edgekit.export.onnx import model_macs_params  # noqa: E402
from edgekit.fsutil import atomic_write_json  # noqa: E402
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig  # noqa: E402
from edgekit.models.train import TrainConfig, train  # noqa: E402
from edgekit.models.zoo import cache_dir, reference_detector, reference_train_config  # noqa: E402

FULL = ["default", "l1", "fpgm", "slim", "progressive", "distill", "microyolo", "qat"]
QUICK = ["default", "slim", "microyolo", "qat"]
# --quick reuses the test suite's cached checkpoint (tests/conftest.py) so it does not train a reference.
QUICK_SHAPES = ShapesConfig(variant="hard", splits={"train": 1200, "val": 200, "calib": 64}, seed=7)
QUICK_TRAIN = reference_train_config(1.2)


def recipe_epochs(recipe) -> float:
    """Training epochs a recipe spends (fine-tunes, sparsity, swap training, QAT), unscaled."""
    total = 0.0
    for step in recipe.torch_steps():
        for name in ("finetune", "train", "sparsity"):
            block = getattr(step, name, None)
            total += getattr(block, "epochs", 0.0) if block is not None else 0.0
        if step.type in ("finetune", "distill", "qat"):
            total += step.epochs
        if step.type == "progressive" and step.finetune is not None:
            total += step.finetune.epochs * step.max_steps_per_layer * (step.max_layers or 9)
    return total


def matched_width(params: int, num_classes: int, shape) -> float:
    """TinyYolo width whose parameter count is closest to ``params``."""
    widths = [w / 16 for w in range(2, 17)]
    count = {
        w: model_macs_params(TinyYolo(TinyYoloConfig(num_classes=num_classes, width=w)), shape)["params"]
        for w in widths
    }
    return min(widths, key=lambda w: abs(count[w] - params))


def control(width: float, epochs: float, ctx, cache: dict) -> dict:
    """Train a TinyYolo of ``width`` from scratch for ``epochs`` and measure it (cached per width+epochs)."""
    key = (width, round(epochs, 3))
    if key not in cache:
        torch.manual_seed(ctx.seed)
        model = TinyYolo(TinyYoloConfig(num_classes=ctx.train.num_classes, width=width))
        train(
            model,
            ctx.train,
            TrainConfig(epochs=epochs),
            progress=ctx.progress,
            description=f"control w{width:g}",
        )
        cache[key] = {"width": width, "epochs": round(epochs, 3), **measure(model, ctx)}
    return cache[key]


def row(name: str, ref: dict, got: dict, ctl: dict, wall: float) -> dict:
    """One result row: absolute figures, ratios vs the reference, deltas in mAP points."""
    return {
        "recipe": name,
        **{k: got[k] for k in ("params", "macs", "map50", "map50_95")},
        "params_ratio": round(ref["params"] / got["params"], 2),
        "macs_ratio": round(ref["macs"] / got["macs"], 2),
        "d_map50": round(100 * (got["map50"] - ref["map50"]), 2),
        "d_map50_95": round(100 * (got["map50_95"] - ref["map50_95"]), 2),
        "control": ctl,
        "vs_control_map50_95": round(100 * (got["map50_95"] - ctl["map50_95"]), 2),
        "wall_s": round(wall, 1),
    }


def markdown(ref: dict, rows: list[dict]) -> str:
    """The Markdown table of the closing note."""
    head = (
        "| recipe | params | x params | MACs | x MACs | mAP50 | d mAP50 | mAP50-95 | d mAP50-95 | "
        "control (width, params) | control mAP50-95 | recipe - control | wall s |"
    )
    lines = [
        head,
        "|" + "---|" * 13,
        f"| reference | {ref['params']:,} | 1.00 | {ref['macs'] / 1e6:.1f} M | 1.00 | "
        f"{ref['map50']:.3f} | - | "
        f"{ref['map50_95']:.3f} | - | - | - | - | - |",
    ]
    for r in rows:
        c = r["control"]
        lines.append(
            f"| {r['recipe']} | {r['params']:,} | {r['params_ratio']:.2f} | {r['macs'] / 1e6:.1f} M | "
            f"{r['macs_ratio']:.2f} | {r['map50']:.3f} | {r['d_map50']:+.2f} | {r['map50_95']:.3f} | "
            f"{r['d_map50_95']:+.2f} | w{c['width']:g}, {c['params']:,} | {c['map50_95']:.3f} | "
            f"{r['vs_control_map50_95']:+.2f} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: small set, epochs x0.05, fewer recipes"
    )
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default: bench/results/)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    shapes, train_cfg = (
        (QUICK_SHAPES, QUICK_TRAIN) if args.quick else (ShapesConfig(), reference_train_config())
    )
    scale = 0.05 if args.quick else 1.0
    root = builtin_dataset(cache_dir(), shapes, progress=not args.quiet)
    ref_model = reference_detector(root, train_cfg, progress=not args.quiet).model
    work = cache_dir() / "bench-compression" / ("quick" if args.quick else "full")
    ctx0 = build_context(root, work, scale, not args.quiet)
    ref = measure(ref_model, ctx0)
    rows, cache = [], {}
    for name in args.recipes or (QUICK if args.quick else FULL):
        recipe = load_recipe(name)
        ctx = build_context(root, work / recipe.name, scale, not args.quiet)
        ctx.train, ctx.val = ctx0.train, ctx0.val
        start = time.perf_counter()
        model, nodes = run_recipe(ref_model, recipe, ctx)
        got = nodes[-1]["metrics"] if nodes else ref
        width = matched_width(got["params"], ctx.train.num_classes, ctx.input_shape)
        ctl = control(width, (train_cfg.epochs + recipe_epochs(recipe)) * scale, ctx0, cache)
        rows.append(row(recipe.name, ref, got, ctl, time.perf_counter() - start))
        print(f"{recipe.name}: done in {rows[-1]['wall_s']} s", file=sys.stderr)
    table = markdown(ref, rows)
    print(table)
    suffix = "-quick" if args.quick else ""
    atomic_write_json(
        args.out or REPO / "bench" / "results" / f"compression{suffix}.json",
        {
            "quick": args.quick,
            "epochs_scale": scale,
            "shapes": shapes.__dict__,
            "train": train_cfg.to_dict(),
            "reference": ref,
            "rows": rows,
            "markdown": table,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
