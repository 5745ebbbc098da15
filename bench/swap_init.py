"""Micro-YOLO's swap from random weights against the swap started from the reference, at equal epochs.

Both variants replace the converged reference's conv blocks by DSConv/MBConv-SE (the `microyolo` recipe's
swap, alpha 1, at ``--width``) and train the result with distillation from the reference for the same
number of epochs; `teacher` first copies the shared layers and fits each swapped block to the block it
replaces (`edgekit/compress/teacher_init.py`, 2 epochs, the last ``--student-fed`` part on the student's own
features); ``--hint`` adds the blocks' hint loss to the distillation while training. Torch FP32 mAP on the val
split, per seed (`--seed`); the rows are kept in `bench/results/swap_init.json` with a hash of the step, so a
re-run skips what is measured and a changed step is measured again.

    .venv/bin/python bench/swap_init.py                 # both, 30 epochs (about 75 min on 2 cores)
    .venv/bin/python bench/swap_init.py --seed 1        # both again with another seed (the spread)
    .venv/bin/python bench/swap_init.py --inits teacher --width 1.15 --hint 1   # the recipe's width, hints
    .venv/bin/python bench/swap_init.py --quick         # a smoke check (0.5 epochs, not kept)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.compress.context import evaluate_map  # noqa: E402
from edgekit.compress.inputs import build_context  # noqa: E402
from edgekit.compress.recipe import SwapSpec  # noqa: E402
from edgekit.compress.swap import SwapStep  # noqa: E402
from edgekit.compress.teacher_init import START_GAIN  # noqa: E402
from edgekit.core.files import atomic_write_json, stable_hash  # noqa: E402
from edgekit.data.shapes import ShapesConfig, builtin_dataset  # noqa: E402
from edgekit.models.zoo import cache_dir, converged_reference  # noqa: E402

OUT = REPO / "bench" / "results" / "swap_init.json"


def spec_of(
    init: str, epochs: float, width: float = 1.0, student_fed: float = 0.5, hint: float = 0.0
) -> SwapSpec:
    """The `microyolo` recipe's swap: ``init``, ``width``, ``hint``, ``epochs`` of distilled training."""
    return SwapSpec(
        type="swap",
        init=init,
        width=width,
        hint=hint,
        init_fit={"student_fed": student_fed},
        train={"epochs": epochs, "lr": 3e-3, "distill": 1.0},
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=float, default=30.0, help="distilled training epochs of both")
    parser.add_argument("--quick", action="store_true", help="smoke check: 0.5 epochs, not kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new blocks and the batch order")
    parser.add_argument("--width", type=float, default=1.0, help="the swap's width (teacher init: >= 1)")
    parser.add_argument(
        "--student-fed", type=float, default=0.5, help="part of the teacher fit fed the student's features"
    )
    parser.add_argument("--hint", type=float, default=0.0, help="hint-loss weight while training")
    parser.add_argument("--inits", nargs="*", default=["random", "teacher"], choices=["random", "teacher"])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs = 0.5
    kept = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
    root = builtin_dataset(cache_dir(), ShapesConfig(), progress=not args.quiet)
    reference = converged_reference(root, 160, progress=not args.quiet)
    ref_metrics = {k: reference.metrics[k] for k in ("map50", "map50_95")}
    ctx = None
    for init in args.inits:
        spec = spec_of(init, args.epochs, args.width, args.student_fed, args.hint)
        dump = spec.model_dump(mode="json")
        gain = START_GAIN if init == "teacher" else None
        key = stable_hash({"spec": dump, "start_gain": gain, **({"seed": args.seed} if args.seed else {})})
        if any(r.get("key") == key for r in kept["rows"]):
            print(f"{init}: measured before, kept")
            continue
        if ctx is None:
            ctx = build_context(root, Path(tempfile.mkdtemp(prefix="swap-init-")), 1.0, not args.quiet)
            ctx.teacher, ctx.seed = reference.model, args.seed
        t0 = time.perf_counter()
        result = SwapStep().apply(reference.model, spec, ctx)
        row = {
            "init": init,
            "key": key,
            "spec": dump,
            "start_gain": gain,
            "seed": args.seed,
            **evaluate_map(result.model, ctx.val),
            "after_init": (result.extra.get("init") or {}).get("after_init"),
            "fit_loss": (result.extra.get("init") or {}).get("fit_loss"),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        if not args.quick:  # read again: another process (the other init, another seed) may have written
            kept = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
        kept["rows"].append(row)
        kept["reference"] = ref_metrics
        if not args.quick:
            atomic_write_json(OUT, kept)
    print(f"reference: mAP50 {ref_metrics['map50']:.3f}, mAP50-95 {ref_metrics['map50_95']:.3f}")
    print(
        "| init | width | student-fed | hint | seed | train epochs | after init mAP50 | mAP50 | mAP50-95 "
        "| Δ50 vs reference | Δ50-95 vs reference | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in kept["rows"]:
        d50 = 100 * (r["map50"] - ref_metrics["map50"])
        d95 = 100 * (r["map50_95"] - ref_metrics["map50_95"])
        fed = (r["spec"].get("init_fit") or {}).get("student_fed", 0.0) if r["init"] == "teacher" else None
        after = (r.get("after_init") or {}).get("map50")
        print(
            f"| {r['init']} | {r['spec'].get('width', 1.0):g} | {'-' if fed is None else f'{fed:g}'} "
            f"| {r['spec'].get('hint', 0.0):g} "
            f"| {r.get('seed', 0)} | {r['spec']['train']['epochs']:g} "
            f"| {'-' if after is None else f'{after:.3f}'} | {r['map50']:.3f} | "
            f"{r['map50_95']:.3f} | {d50:+.2f} | {d95:+.2f} | {r['wall_s']:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
