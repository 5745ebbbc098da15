"""Issue 43: a real, trained third-party detector compressed by `edgekit deploy` without its training data.

The model is ddddocr's YOLOX text detector (tests/realmodels/models.json, fetched by `make real-models`).
Its training data is not at hand, so the images are made here: seeded pictures of random words in
Pillow's font at several sizes and colours over noisy backgrounds with a few shapes (``text_images``).
The run is exactly `edgekit deploy --model <file> --images <folder>` with the default recipe, on this host
(ONNX Runtime INT8): 4 in 5 images train the distillation, 1 in 5 is held back, and the figure is
teacher agreement (mAP of the deployed model's detections against the FP32 original's, score >= 0.25)
on the held-back images. Not mAP: there are no labels.

Resumable: a finished run is kept in ``bench/results/foreign-real-state.json``; the fine-tune resumes from
its last saved epoch (edgekit's compress cache).

Usage: python bench/foreign_real.py [--images 160,400] [--epochs-scale 1.0] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.models.zoo import cache_dir  # noqa: E402
from edgekit.pipeline import DeployRequest, deploy  # noqa: E402
from tests.realmodels.fetch import fetch, models  # noqa: E402

STATE = RESULTS / "foreign-real-state.json"
MODEL = "ddddocr-yolox"


def text_images(dest: Path, count: int, size: int = 416, seed: int = 0) -> Path:
    """``count`` seeded images of random words (the text detector's domain), written once into ``dest``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if dest.is_dir() and len(list(dest.glob("*.png"))) == count:
        return dest
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        for k in range(count):
            bg = rng.integers(0, 256, 3)
            noise = rng.normal(0, rng.uniform(0, 25), (size, size, 3))
            image = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.integers(0, 4)):  # distractors
                x0, y0 = rng.integers(0, size - 40, 2)
                box = [int(x0), int(y0), int(x0 + rng.integers(20, 160)), int(y0 + rng.integers(20, 160))]
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
            for _ in range(rng.integers(2, 8)):
                word = "".join(rng.choice(letters, int(rng.integers(2, 9))))
                font = ImageFont.load_default(size=int(rng.integers(14, 56)))
                colour = tuple(int(255 - v if rng.random() < 0.8 else v) for v in bg)
                x, y = int(rng.integers(0, size - 60)), int(rng.integers(0, size - 30))
                draw.text((x, y), word, fill=colour, font=font)
            image.save(Path(tmp) / f"text_{k:04d}.png")
        if dest.exists():
            shutil.rmtree(dest)
        Path(tmp).replace(dest)
    return dest


def target_yaml(folder: Path, spec: dict) -> Path:
    """The `local` target at the model's input size and preprocessing."""
    import yaml

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "targets" / "local.yaml").read_text())
    base.update(name="local-yolox", input_size=spec["input_size"], preprocess=spec["preprocess"])
    path = folder / "local-yolox.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def run_one(images: int, epochs_scale: float, state: dict) -> dict:
    """One `edgekit deploy` of the real model on ``images`` made images (or its kept result)."""
    key = f"{MODEL}-{images}-{epochs_scale:g}"
    if key not in state:
        spec = models()[MODEL]
        work = cache_dir() / "bench" / "foreign-real"
        folder = text_images(work / f"text-{images}", images, spec["input_size"])
        start = time.perf_counter()
        shutil.rmtree(work / "runs" / key, ignore_errors=True)  # an interrupted run: its fine-tune resumes
        run = deploy(
            DeployRequest(
                target=str(target_yaml(work, spec)), model=str(fetch(MODEL)), images=str(folder),
                device="local", out=work / "runs", run_id=key, epochs_scale=epochs_scale,
                command=["bench/foreign_real.py"],
            )
        )  # fmt: skip
        summary = json.loads((run / "summary.json").read_text())
        record = json.loads((run / "record.json").read_text())
        prune = next(n for n in record["nodes"] if n["stage"] == "compress:prune")
        labels = next(n for n in record["nodes"] if n["stage"] == "teacher labels")
        state[key] = {
            "model": MODEL, "images": images, "held_back": labels["config"]["images"],
            "teacher_boxes": labels["metrics"]["boxes"], "epochs_scale": epochs_scale,
            "metric": summary["metric"],
            "macs_ratio": round(summary["reference"]["macs"] / summary["deployed"]["macs"], 3),
            "params_ratio": round(summary["reference"]["params"] / summary["deployed"]["params"], 3),
            "torch_agreement50": prune["metrics"]["map50"],
            "torch_agreement50_95": prune["metrics"]["map50_95"],
            "int8_agreement50": summary["deployed"]["map50"],
            "int8_agreement50_95": summary["deployed"]["map50_95"],
            "finetune_s": prune["metrics"].get("wall_s"), "wall_s": round(time.perf_counter() - start, 1),
            "latency_p50_ms": summary["latency_ms"]["p50"],
        }  # fmt: skip
        STATE.parent.mkdir(parents=True, exist_ok=True)
        STATE.write_text(json.dumps(state, indent=2))
    return state[key]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="160,400", help="images to make, one run per count (1 in 5 held back)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies the recipe's 20 epochs")
    p.add_argument("--fresh", action="store_true", help="forget the finished run")
    args = p.parse_args(argv)
    state = {} if args.fresh or not STATE.is_file() else json.loads(STATE.read_text())
    rows = [run_one(int(count), args.epochs_scale, state) for count in args.images.split(",")]
    save("foreign-real", {"runs": rows})
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
