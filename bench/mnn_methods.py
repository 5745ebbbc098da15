"""MNN precisions and INT8 methods on the reference detector: mAP from the runner's own outputs vs ORT FP32.

Same data and checkpoint as the test suite (``tests/conftest.py``: hard shapes, 1200/200/64, schedule
x1.2); the calibration set is the dataset's ``calib`` split (64 images); mAP is on the 200 ``val``
images, computed from the detections the device runner (``mnn_run.py`` / ``ort_run.py``) wrote, run on
this host through ``LocalTransport`` + ``Agent``. It chose ``edgekit.backends.mnn.DEFAULT_METHOD``.

Usage:
    .venv/bin/python bench/mnn_methods.py   # prints a Markdown table, writes results/mnn_methods.json
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit"))

from bench.common import save, table  # noqa: E402
from edgekit.backends.contract.base import PARITY, BuildOptions, Parity  # noqa: E402
from edgekit.backends.mnn import backend as mnn_backend  # noqa: E402
from edgekit.calib import import_set  # noqa: E402
from edgekit.core.registry import BACKENDS  # noqa: E402
from edgekit.data.dataset import YoloDataset  # noqa: E402
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.data.shapes import builtin_dataset  # noqa: E402
from edgekit.device.agent import Agent, BenchPlan  # noqa: E402
from edgekit.device.transport import LocalTransport  # noqa: E402
from edgekit.export.onnx import export_onnx  # noqa: E402
from edgekit.models.train import InMemorySplit, map_from_candidates  # noqa: E402
from edgekit.models.zoo import cache_dir, reference_detector, reference_train_config  # noqa: E402
from tests.conftest import TEST_SHAPES, TRAIN_SCALE  # noqa: E402

SPEC = PreprocessSpec(input_size=160)
VARIANTS = [
    ("onnxruntime", "fp32", None),
    ("mnn", "fp32", None),
    ("mnn", "fp16", None),
    ("mnn", "int8", {"method": "kl"}),
    ("mnn", "int8", {"method": "ema"}),
    ("mnn", "int8", {"method": "ema", "batch_size": 16}),
    ("mnn", "int8", {"method": "ema", "images": 32}),
    ("mnn", "int8", {"method": "kl", "images": 32}),
]
#: Measure every variant, even one the build's checks would refuse (its cosines are reported).
RELAXED = {**PARITY, "int8": Parity(0.0, float("inf"))}
mnn_backend.MIN_PART_COSINE = -1.0


def _evaluate(folder: Path, inputs: np.ndarray, val) -> dict:
    plan = BenchPlan(
        inputs[:1], inputs, warmup=5, min_warmup_s=0.2, iterations=100, min_seconds=1.0, threads=2
    )
    res = Agent(LocalTransport()).bench(folder, plan, progress=False)
    return {**map_from_candidates(val, res.detections), "p50_ms": res.stats["p50"]}


def main() -> None:
    """Build every variant, evaluate it through the runner, print the table."""
    root = builtin_dataset(cache_dir(), TEST_SHAPES, progress=False)
    trained = reference_detector(root, reference_train_config(TRAIN_SCALE), progress=False)
    val = InMemorySplit(YoloDataset(root, "val"), SPEC)
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="edgekit-mnn-bench-") as tmp:
        onnx = export_onnx(trained.model.eval(), [1, 3, 160, 160], Path(tmp) / "det.onnx")
        calib = import_set(root, "shapes-calib", root=Path(tmp) / "calibration", from_dataset=True,
                           split="calib", spec=SPEC).set  # fmt: skip
        for i, (backend, precision, quantizer) in enumerate(VARIANTS):
            options = BuildOptions(precision=precision, threads=2, preprocess=SPEC, head="yolov5",
                                   num_classes=val.num_classes)  # fmt: skip
            opts = options.model_dump() | ({"quantizer": quantizer} if quantizer else {})
            folder = Path(tmp) / f"art{i}"
            builder = BACKENDS.create(backend)
            builder.parity = RELAXED
            art = builder.build(onnx, opts, folder, calib=calib, reference=onnx)
            scores = _evaluate(folder, inputs, val)
            size = sum((folder / f).stat().st_size for f in art.files.values())
            parity = art.meta["parity"]["outputs"][0]
            label = f"{backend} {precision}" + (f" {quantizer}" if quantizer else "")
            parts = art.meta.get("mnn", {}).get("graph", {}).get("part_cosine", {})
            results.append({"variant": label, **scores, "size_bytes": size, "parity": parity, "parts": parts})
            row = [label, scores["map50_95"], scores["map50"], size, parity["cosine"], parity["rel_error"]]
            rows.append([*row, parts.get("scores", "-"), scores["p50_ms"]])
    print(table(["variant", "mAP50-95", "mAP50", "bytes", "cos", "rel err", "score cos", "p50 ms x86"], rows))
    print(save("mnn_methods", {"calibration": calib.ref(), "results": results}))


if __name__ == "__main__":
    main()
