"""How far two controls of one architecture fall apart: the noise floor of "recipe − control" (issue 17).

A recipe's control (edgekit/compress/control.py) is one training run from scratch, seed 0. Whether a
recipe 0.6 points below its control lost to it, or to the seed, needs the spread of the control itself:
this trains the same architecture for the same epochs again with other seeds (initial weights and batch
order) and prints each recipe's control mAP per seed, their mean and range, and recipe − mean.

The architecture is the recipe's compressed model from the compress cache and the epochs are its
control's, both from `bench/compression.py`'s run (run that first). Rows are kept in
`bench/results/control-spread.json` (keyed by recipe, architecture, epochs and seed), so a re-run trains
only what is missing, and a control cut short resumes from its last finished epoch. A 50-epoch control
takes about 20 minutes on one core; run two recipes side by side with `OMP_NUM_THREADS=1`.

    .venv/bin/python bench/control_spread.py --recipes distill --seeds 1 2
    .venv/bin/python bench/control_spread.py            # print what is kept
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.core.files import atomic_write_json, stable_hash  # noqa: E402

STATE = REPO / "bench" / "results" / "compression-state.json"
OUT = REPO / "bench" / "results" / "control-spread.json"


def cached_model(name: str):
    """The last cached compression step of recipe ``name`` on the converged reference (a torch model)."""
    import torch
    from common import cached_steps

    from edgekit.models.zoo import cache_dir

    steps = cached_steps(name)
    if not steps:
        raise SystemExit(
            f"no compressed model of {name!r} in {cache_dir() / 'compress'}: "
            f"run `.venv/bin/python bench/compression.py --recipes {name}` (or `edgekit deploy -t local "
            f"-r {name}`) first"
        )
    return torch.load(steps[-1], map_location="cpu", weights_only=False).eval()


def measure(name: str, seed: int, control: dict, kept: dict, progress: bool) -> dict:
    """Train recipe ``name``'s control (``control``: the bench's seed-0 one) with ``seed``; its row."""
    from edgekit.compress.control import train_control
    from edgekit.compress.inputs import build_context
    from edgekit.data.shapes import ShapesConfig, builtin_dataset
    from edgekit.export.onnx import model_macs_params
    from edgekit.models.zoo import cache_dir

    model, epochs = cached_model(name), float(control["epochs"])
    params = int(model_macs_params(model, (1, 3, 160, 160))["params"])
    if params != control["params"]:
        raise SystemExit(
            f"the cached {name} model has {params:,} parameters, its control {control['params']:,}: "
            f"the cache holds another run - run bench/compression.py --recipes {name} again"
        )
    key = stable_hash({"recipe": name, "arch": str(model), "epochs": epochs, "seed": seed})
    if key in kept:
        return kept[key]
    root = builtin_dataset(cache_dir(), ShapesConfig(), progress=progress)
    ctx = build_context(root, Path(), 1.0, progress)
    work = cache_dir() / "control-spread" / f"{name}-{seed}"  # an interrupted control resumes from here
    result = train_control(
        model, epochs, lambda: ctx.train, ctx.val, ctx.spec.input_shape(), work, progress, seed
    )
    result.pop("cached")
    return {"recipe": name, "seed": seed, **result, "key": key}


def table(rows: dict, state: dict) -> str:
    """Per recipe: its controls' mAP by seed (0: the compression bench's), mean, range, recipe − mean."""
    lines = [
        "| recipe | controls mAP@0.5 / 0.5:0.95 (seed) | mean | range (points) | recipe − mean (points) |",
        "|---|---|---|---|---|",
    ]
    for name, srow in state["rows"].items():
        ctl = srow.get("control")
        if not ctl:
            continue
        same = (  # other seeds of this row's control: the same architecture and epochs, not an older row's
            r
            for r in rows.values()
            if r["recipe"] == name and r["params"] == ctl["params"] and r["epochs"] == ctl["epochs"]
        )
        extra = sorted(same, key=lambda r: r["seed"])
        if not extra:
            continue
        runs = [{"seed": 0, **ctl}, *extra]
        m50 = statistics.mean(r["map50"] for r in runs)
        m95 = statistics.mean(r["map50_95"] for r in runs)
        spread = [100 * (max(r[k] for r in runs) - min(r[k] for r in runs)) for k in ("map50", "map50_95")]
        ref = state["reference"]
        got50 = ref["map50"] + srow["d_map50_torch"] / 100
        got95 = ref["map50_95"] + srow["d_map50_95_torch"] / 100
        cells = ", ".join(f"{r['map50']:.3f} / {r['map50_95']:.3f} ({r['seed']})" for r in runs)
        lines.append(
            f"| {name} | {cells} | {m50:.3f} / {m95:.3f} | {spread[0]:.1f} / {spread[1]:.1f} "
            f"| {100 * (got50 - m50):+.1f} / {100 * (got95 - m95):+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="*", default=[], help="recipes whose control to train again")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2], help="seeds (0 is the bench's own)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    state = json.loads(STATE.read_text())
    for name in args.recipes:
        ctl = state["rows"].get(name, {}).get("control")
        if not ctl:
            parser.error(f"{name} has no control in {STATE.name}: run bench/compression.py --recipes {name}")
        for seed in args.seeds:
            if seed == 0:
                continue  # the bench's own control
            kept = json.loads(OUT.read_text())["rows"] if OUT.is_file() else {}
            row = measure(name, seed, ctl, kept, not args.quiet)
            # re-read before writing: two runs side by side share the file
            kept = json.loads(OUT.read_text())["rows"] if OUT.is_file() else {}
            kept[row["key"]] = row
            atomic_write_json(OUT, {"rows": kept})
            print(f"{name} seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() else {}
    print(table(rows, state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
