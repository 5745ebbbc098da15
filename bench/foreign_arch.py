"""Issue 43: two detectors edgekit did not write, trained here, then handed to `edgekit deploy` as ONNX alone.

``V8Det`` (YOLOv8n-style: C2f, SPPF, DFL head) and ``V5Det`` (YOLOv5n-style: C3, anchors) from
tests/foreign_arch.py are trained on the built-in shapes data at 160 px with the detection loss on their
decoded output (edgekit.compress.decoded_loss: they bring no loss of their own), exported to ONNX, and
the file alone goes to `edgekit deploy --model <file> --data <shapes> --recipe R` on this host (ONNX
Runtime INT8). Per recipe and model: params and MACs ratios, Δ mAP@0.5 / 0.5:0.95 of the compressed torch
model and of the deployed INT8 against the FP32 file, and the fine-tune's wall time, with the detection
loss beside distillation (edgekit's default with labels) and without it (distillation alone).

Resumable: the trained models are cached (their training resumes by epoch), and every finished deploy is
kept in ``bench/results/foreign-arch-state.json``.

Usage: python bench/foreign_arch.py [--models v8,v5] [--recipes default] [--losses det,distill]
       [--epochs 60] [--epochs-scale 1.0] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from common import RESULTS, SPEC, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from edgekit.compress import finetune as finetune_module  # noqa: E402
from edgekit.compress.decoded_loss import decoded_detection_loss  # noqa: E402
from edgekit.data.dataset import YoloDataset  # noqa: E402
from edgekit.data.shapes import ShapesConfig, builtin_dataset  # noqa: E402
from edgekit.models.train import InMemorySplit, TrainConfig, evaluate, train  # noqa: E402
from edgekit.models.zoo import cache_dir  # noqa: E402
from edgekit.pipeline import DeployRequest, deploy  # noqa: E402
from tests.foreign_arch import V5Det, V8Det  # noqa: E402

STATE = RESULTS / "foreign-arch-state.json"
ARCHS = {"v8": (V8Det, "yolov8"), "v5": (V5Det, "yolov5")}


def trained_onnx(name: str, root: Path, epochs: int, work: Path) -> tuple[Path, dict]:
    """The architecture trained ``epochs`` (one cosine from 3e-3) and exported; cached with its val mAP."""
    from edgekit.export.onnx import export_onnx

    arch, head = ARCHS[name]
    path, meta = work / f"{name}-{epochs}ep.onnx", work / f"{name}-{epochs}ep.json"
    if path.is_file() and meta.is_file():
        return path, json.loads(meta.read_text())
    torch.manual_seed(0)
    model = arch()
    model.head_layout = head  # how edgekit's evaluation reads its output

    def objective(x, boxes, classes):
        return decoded_detection_loss(model(x), head, boxes, classes, (SPEC.input_size,) * 2), []

    train_split = InMemorySplit(YoloDataset(root, "train"), SPEC)
    start = time.perf_counter()
    stats = train(
        model, train_split, TrainConfig(epochs=epochs, lr=3e-3), description=f"training {name}",
        resume_dir=work / f"train-{name}", objective=objective,
    )  # fmt: skip
    maps = evaluate(model, InMemorySplit(YoloDataset(root, "val"), SPEC))
    export_onnx(model.eval(), (1, 3, SPEC.input_size, SPEC.input_size), path)
    info = {"epochs": epochs, "train": stats, "wall_s": round(time.perf_counter() - start, 1), **maps}
    meta.write_text(json.dumps(info, indent=2))
    return path, info


def run_one(name: str, recipe: str, loss: str, args, root: Path, state: dict) -> dict:
    """One `edgekit deploy` of a trained architecture's ONNX (or its kept result)."""
    rate = args.lr_scale
    if rate is None:  # edgekit's own: the labelled rate with the detection loss, else distillation's
        rate = finetune_module.LABELLED_LR_SCALE if loss == "det" else finetune_module.FOREIGN_LR_SCALE
    key = f"{name}-{args.epochs}ep-{recipe}-{loss}-{args.epochs_scale:g}-lr{rate:g}"
    if key in state:
        return state[key]
    work = cache_dir() / "bench" / "foreign-arch"
    work.mkdir(parents=True, exist_ok=True)
    path, info = trained_onnx(name, root, args.epochs, work)
    saved = [finetune_module.FOREIGN_DETECTION_WEIGHT, finetune_module.FOREIGN_LR_SCALE]
    saved.append(finetune_module.LABELLED_LR_SCALE)
    finetune_module.FOREIGN_DETECTION_WEIGHT = saved[0] if loss == "det" else 0.0
    finetune_module.FOREIGN_LR_SCALE = finetune_module.LABELLED_LR_SCALE = rate
    start = time.perf_counter()
    shutil.rmtree(work / "runs" / key, ignore_errors=True)  # an interrupted run: its fine-tune resumes
    try:
        run = deploy(
            DeployRequest(
                target="local", model=str(path), data=str(root), recipe=recipe, device="local",
                out=work / "runs", run_id=key, epochs_scale=args.epochs_scale,
                command=["bench/foreign_arch.py"],
            )
        )  # fmt: skip
    finally:
        (
            finetune_module.FOREIGN_DETECTION_WEIGHT,
            finetune_module.FOREIGN_LR_SCALE,
            finetune_module.LABELLED_LR_SCALE,
        ) = saved
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((run / "record.json").read_text())
    steps = [n for n in record["nodes"] if n["stage"].startswith("compress:")]
    torch_final = steps[-1]["metrics"] if steps else summary["reference"]
    ref, dep = summary["reference"], summary["deployed"]
    pts = lambda a, b: None if a is None or b is None else round(100 * (a - b), 2)  # noqa: E731
    state[key] = {
        "model": name, "recipe": recipe, "loss": loss, "trained_epochs": args.epochs,
        "epochs_scale": args.epochs_scale, "lr_scale": rate,
        "trained_map50": info["map50"], "trained_map50_95": info["map50_95"],
        "macs_ratio": round(ref["macs"] / dep["macs"], 3),
        "params_ratio": round(ref["params"] / dep["params"], 3),
        "reference_map50": ref["map50"], "reference_map50_95": ref["map50_95"],
        "torch_d_map50": pts(torch_final["map50"], ref["map50"]),
        "torch_d_map50_95": pts(torch_final["map50_95"], ref["map50_95"]),
        "int8_d_map50": pts(dep["map50"], ref["map50"]),
        "int8_d_map50_95": pts(dep["map50_95"], ref["map50_95"]),
        "finetune_s": sum(s["metrics"].get("wall_s") or 0 for s in steps),
        "wall_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    kept = json.loads(STATE.read_text()) if STATE.is_file() else {}  # another process may have added runs
    kept[key] = state[key]
    STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=2))
    tmp.replace(STATE)
    print(json.dumps(state[key]), flush=True)
    return state[key]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="v8,v5", help="architectures (v8, v5)")
    p.add_argument("--recipes", default="default", help="recipes, comma-separated")
    p.add_argument(
        "--losses", default="det,distill", help="det: distillation + detection loss; distill: alone"
    )
    p.add_argument("--epochs", type=int, default=60, help="training epochs of each architecture")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies the recipes' epochs")
    p.add_argument("--lr-scale", type=float, default=None, help="user-model rate x (default: edgekit's)")
    p.add_argument("--train-only", action="store_true", help="train and export the models, deploy nothing")
    p.add_argument("--fresh", action="store_true", help="forget the finished deploys")
    args = p.parse_args(argv)
    root = builtin_dataset(cache_dir(), ShapesConfig(image_size=SPEC.input_size))
    state = {} if args.fresh or not STATE.is_file() else json.loads(STATE.read_text())
    if args.train_only:
        work = cache_dir() / "bench" / "foreign-arch"
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps({m: trained_onnx(m, root, args.epochs, work)[1] for m in args.models.split(",")}))
        return 0
    rows = [
        run_one(m, r, loss, args, root, state)
        for m in args.models.split(",")
        for r in args.recipes.split(",")
        for loss in args.losses.split(",")
    ]
    every = json.loads(STATE.read_text()) if STATE.is_file() else {}  # with other processes' and earlier runs
    save("foreign-arch", {"runs": rows, "all_runs": list(every.values())})
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
