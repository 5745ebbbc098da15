"""Network slimming stage by stage on the converged reference: where its accuracy goes, what a schedule buys.

Runs the `slim` recipe's step (or a variant: ``--sparsity-epochs``, ``--lam``, ``--ratio``,
``--finetune-epochs``) on the converged reference and records torch FP32 mAP on the val split after
each phase: sparsity training (the shrink of BN gammas), the cut (channels removed, BN statistics
re-estimated) and the distilled fine-tune, with the share of near-zero gammas and the parameter and MAC
reductions. Rows are kept in `bench/results/slim_stages.json` with a hash of the step, so a re-run skips
what is measured.

    .venv/bin/python bench/slim_stages.py                          # the recipe's step (~45 min, 2 cores)
    .venv/bin/python bench/slim_stages.py --sparsity-epochs 20     # a longer sparsity phase
    .venv/bin/python bench/slim_stages.py --quick                  # a smoke check (not kept)
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
from edgekit.compress.recipe import SlimSpec, load_recipe  # noqa: E402
from edgekit.compress.slimming import SlimStep  # noqa: E402
from edgekit.core.files import atomic_write_json, stable_hash  # noqa: E402
from edgekit.data.shapes import ShapesConfig, builtin_dataset  # noqa: E402
from edgekit.export.onnx import model_macs_params  # noqa: E402
from edgekit.models.zoo import cache_dir, converged_reference  # noqa: E402

OUT = REPO / "bench" / "results" / "slim_stages.json"


def spec_from_args(args: argparse.Namespace) -> SlimSpec:
    """The `slim` recipe's step with the options given on the command line changed."""
    step = next(s for s in load_recipe("slim").steps if s.type == "slim")
    spec = step.model_dump()
    if args.sparsity_epochs is not None:
        spec["sparsity"]["epochs"] = args.sparsity_epochs
    if args.lam is not None:
        spec["sparsity"]["lam"] = args.lam
    if args.sparsity_distill is not None:
        spec["sparsity"]["distill"] = args.sparsity_distill
    if args.shrink is not None:
        spec["sparsity"]["shrink"] = args.shrink
    if args.ratio is not None:
        spec["ratio"] = args.ratio
    if args.finetune_epochs is not None:
        spec["finetune"]["epochs"] = args.finetune_epochs
    return SlimSpec.model_validate(spec)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sparsity-epochs", type=float, help="sparsity training epochs (recipe: 10)")
    parser.add_argument("--lam", type=float, help="L1 strength of the shrink (recipe: 10)")
    parser.add_argument(
        "--sparsity-distill", type=float, help="distillation weight while shrinking (recipe: 0)"
    )
    parser.add_argument(
        "--shrink", choices=("gamma", "channel"), help="what the L1 shrink acts on (see SparsitySpec)"
    )
    parser.add_argument("--ratio", type=float, help="fraction of all channels removed (recipe: 0.45)")
    parser.add_argument("--finetune-epochs", type=float, help="distilled fine-tune epochs (recipe: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order")
    parser.add_argument("--quick", action="store_true", help="smoke check: every schedule x 0.02, not kept")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    spec = spec_from_args(args)
    dump = spec.model_dump(mode="json")
    key = stable_hash({"spec": dump, **({"seed": args.seed} if args.seed else {})})
    kept = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
    if not args.quick and any(r.get("key") == key for r in kept["rows"]):
        print("measured before, kept")
    else:
        root = builtin_dataset(cache_dir(), ShapesConfig(), progress=not args.quiet)
        reference = converged_reference(root, 160, progress=not args.quiet)
        scale = 0.02 if args.quick else 1.0
        ctx = build_context(root, Path(tempfile.mkdtemp(prefix="slim-stages-")), scale, not args.quiet)
        ctx.teacher, ctx.seed = reference.model, args.seed
        ref_cost = model_macs_params(reference.model, ctx.input_shape)
        t0 = time.perf_counter()
        result = SlimStep().apply(reference.model, spec, ctx)
        cost = model_macs_params(result.model, ctx.input_shape)
        row = {
            "key": key,
            "spec": dump,
            "seed": args.seed,
            "reference": {k: reference.metrics[k] for k in ("map50", "map50_95")},
            **result.extra["stages"],
            "final": evaluate_map(result.model, ctx.val),
            "sparsity": result.extra["sparsity"],
            "params_ratio": round(ref_cost["params"] / cost["params"], 3),
            "macs_ratio": round(ref_cost["macs"] / cost["macs"], 3),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row, indent=1))
        if args.quick:
            return 0
        kept = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}  # another run may have written
        kept["rows"].append(row)
        atomic_write_json(OUT, kept)
    print(
        "| sparsity ep | lam | shrink | KD while shrinking | ratio | fine-tune ep | seed | near-zero gammas "
        "| after sparsity | after cut | after fine-tune | params ÷ | MACs ÷ | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in kept["rows"]:
        s, sp = r["spec"], r["sparsity"]
        cells = [
            f"{r[k]['map50']:.3f} / {r[k]['map50_95']:.3f}"
            for k in ("after_sparsity", "after_prune", "final")
        ]
        print(
            f"| {s['sparsity']['epochs']:g} | {s['sparsity']['lam']:g} "
            f"| {s['sparsity'].get('shrink', 'gamma')} "
            f"| {s['sparsity'].get('distill', 0.0):g} | {s['ratio']:g} "
            f"| {s['finetune']['epochs']:g} | {r['seed']} | {100 * sp['fraction_after']:.0f} % "
            f"| {' | '.join(cells)} | {r['params_ratio']:.2f} | {r['macs_ratio']:.2f} "
            f"| {r['wall_s'] / 60:.0f} min |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
