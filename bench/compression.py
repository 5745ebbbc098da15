"""Compression benchmark (issue 17): every recipe end to end on the converged reference, beside its control.

For each recipe, one `edgekit deploy --target local` (the converged reference of `make deploy`, the
recipe, ONNX Runtime INT8, mAP from the runner's own outputs): params and MACs ratios against the
reference, Δ mAP@0.5 and Δ mAP@0.5:0.95 of the compressed torch model (FP32, or fake-quant for QAT) and of
the deployed INT8 artifact. The **control** of a recipe is its own compressed architecture (the same
layer widths, Micro-YOLO blocks for microyolo) re-initialised and trained from scratch with one cosine
schedule for the same total epochs (the reference's + the recipe's own): recipe − control says whether
the recipe beat spending the same compute on the small model directly. It is the deploy's own
`--control` node (edgekit/compress/control.py), so the bench and a user's report measure it the same way.

Everything is resumable: the deploys reuse the compress cache (`.cache/edgekit/compress/`), finished
rows and controls are kept in `bench/results/compression-state.json` (with a hash of the recipe's steps: a
changed recipe is measured again), so a stopped run goes on; `compression.json` holds every row measured.

    .venv/bin/python bench/compression.py                       # every recipe (hours on 2 cores)
    .venv/bin/python bench/compression.py --recipes default mcu  # some
    .venv/bin/python bench/compression.py --quick                # smoke check, numbers not meaningful
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.compress.recipe import load_recipe  # noqa: E402
from edgekit.core.files import atomic_write_json, stable_hash  # noqa: E402
from edgekit.pipeline import DeployRequest, deploy  # noqa: E402

FULL = ["default", "l1", "fpgm", "slim", "progressive", "distill", "microyolo", "mcu", "qat"]
QUICK = ["default", "microyolo"]
STATE = REPO / "bench" / "results" / "compression-state.json"


def measure_recipe(
    name: str, work: Path, scale: float, reference: str, control: bool, progress: bool
) -> dict:
    """Deploy ``name`` to the local target (with its control); the figures of its record."""
    run_dir = deploy(
        DeployRequest(
            target="local", recipe=name, out=work, run_id=name, progress=progress, epochs_scale=scale,
            reference=reference, control=control, command=["bench/compression.py"],
        )
    )  # fmt: skip
    return figures(name, run_dir)


def figures(name: str, run_dir: Path) -> dict:
    """The figures of a local deploy's record (the reference, the compressed torch model, INT8, control)."""
    record = json.loads((run_dir / "record.json").read_text())
    nodes = {n["stage"]: n for n in record["nodes"]}
    ref = nodes["reference"]["metrics"]
    comp = [n for n in record["nodes"] if n["stage"].startswith("compress:")]
    torch_m = comp[-1]["metrics"] if comp else ref
    dep = nodes["eval"]["metrics"]
    ctl = nodes.get("control")
    return {
        "recipe": name,
        "reference": {k: ref[k] for k in ("params", "macs", "map50", "map50_95")},
        "torch": {k: torch_m[k] for k in ("params", "macs", "map50", "map50_95")},
        "deployed": {k: dep.get(k) for k in ("map50", "map50_95")},
        "control": {
            **ctl["metrics"],
            "epochs": ctl["config"]["epochs"],
            "wall_s": ctl["extra"]["train_wall_s"],
        }
        if ctl
        else None,  # fmt: skip
        "compress_s": round(sum(n.get("seconds") or 0 for n in comp), 1),
        "steps": stable_hash(record["recipe"]["steps"]),
    }


def row(m: dict) -> dict:
    """One result row: ratios against the reference, deltas in mAP points, recipe − control."""
    ref, got, dep, ctl = m["reference"], m["torch"], m["deployed"], m["control"]
    out = {
        "recipe": m["recipe"],
        "params": got["params"],
        "macs": got["macs"],
        "params_ratio": round(ref["params"] / got["params"], 2),
        "macs_ratio": round(ref["macs"] / got["macs"], 2),
        "d_map50_torch": round(100 * (got["map50"] - ref["map50"]), 2),
        "d_map50_95_torch": round(100 * (got["map50_95"] - ref["map50_95"]), 2),
        "d_map50_int8": round(100 * (dep["map50"] - ref["map50"]), 2),
        "d_map50_95_int8": round(100 * (dep["map50_95"] - ref["map50_95"]), 2),
        "control": ctl,
        "vs_control_map50_95": round(100 * (got["map50_95"] - ctl["map50_95"]), 2) if ctl else None,
        "vs_control_map50": round(100 * (got["map50"] - ctl["map50"]), 2) if ctl else None,
        "compress_s": m["compress_s"],
    }
    return out


def markdown(ref: dict, rows: list[dict]) -> str:
    """The Markdown table of the closing note and README."""
    lines = [
        "| recipe | params ÷ | MACs ÷ | Δ mAP@0.5 torch / INT8 | Δ mAP@0.5:0.95 torch / INT8 | "
        "control mAP@0.5:0.95 (epochs) | recipe − control (0.5 / 0.5:0.95) |",
        "|---|---|---|---|---|---|---|",
        f"| reference ({ref['params']:,} params, {ref['macs'] / 1e6:.1f} M MACs, mAP@0.5 {ref['map50']:.3f}, "
        f"mAP@0.5:0.95 {ref['map50_95']:.3f}) | 1 | 1 | – | – | – | – |",
    ]
    for r in rows:
        c = r["control"]
        ctl = f"{c['map50_95']:.3f} ({c['epochs']:g})" if c else "–"
        vs = f"{r['vs_control_map50']:+.1f} / {r['vs_control_map50_95']:+.1f}" if c else "–"
        lines.append(
            f"| {r['recipe']} | {r['params_ratio']:.2f} | {r['macs_ratio']:.2f} | "
            f"{r['d_map50_torch']:+.1f} / {r['d_map50_int8']:+.1f} | "
            f"{r['d_map50_95_torch']:+.1f} / {r['d_map50_95_int8']:+.1f} | {ctl} | {vs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: quick reference, epochs x0.05")
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--no-control", action="store_true", help="skip the from-scratch controls")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--from-run", type=Path, default=None, metavar="RUN_DIR",
        help="enter --recipes NAME from a finished `edgekit deploy -t local -r NAME --control` run folder",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_run and len(args.recipes or []) != 1:
        parser.error("--from-run enters one recipe: name it with --recipes NAME")
    scale, reference = (0.05, "quick") if args.quick else (1.0, "converged")
    state_path = STATE.with_name("compression-quick-state.json") if args.quick else STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rows": {}}
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes or (QUICK if args.quick else FULL):
            recipe = load_recipe(name)
            steps = stable_hash([s.model_dump(mode="json") for s in recipe.steps])
            if state["rows"].get(name, {}).get("steps") == steps and not args.from_run:
                print(f"{name}: kept from {state_path.name}", file=sys.stderr)
                ref = ref or state.get("reference")
                continue
            control = not args.no_control and bool(recipe.torch_steps())
            if args.from_run:
                m = figures(name, args.from_run)
                if m["steps"] != steps:
                    parser.error(f"{args.from_run} ran other steps than recipes/{name}.yaml: deploy it again")
            else:
                m = measure_recipe(name, Path(tmp), scale, reference, control, not args.quiet)
            ref = m["reference"]
            # re-read before writing: two runs (--recipes a b / --recipes c) may share the state file
            state = json.loads(state_path.read_text()) if state_path.is_file() else {"rows": {}}
            state["rows"][name] = {**row(m), "steps": steps}
            state["reference"] = ref
            atomic_write_json(state_path, state)
            print(f"{name}: {json.dumps(state['rows'][name])}", file=sys.stderr, flush=True)
    state = json.loads(state_path.read_text()) if state_path.is_file() else state
    # every recipe measured so far (a run of some recipes does not drop the others' rows)
    order = [*FULL, *sorted(set(state["rows"]) - set(FULL))]
    rows = [state["rows"][n] for n in order if n in state["rows"]]
    table = markdown(ref or state["reference"], rows)
    print(table)
    suffix = "-quick" if args.quick else ""
    atomic_write_json(
        REPO / "bench" / "results" / f"compression{suffix}.json",
        {"quick": args.quick, "epochs_scale": scale, "reference": ref, "rows": rows, "markdown": table},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
