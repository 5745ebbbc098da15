"""Issue 41: real detectors others published, INT8 on every CPU runtime, judged by agreement with FP32.

For each real model (tests/realmodels/models.json, fetched by `make real-models`) x runtime (ONNX
Runtime, ncnn, MNN, the TensorRT QDQ form checked in ONNX Runtime, OpenVINO) x calibrator (``default``: the
backend's methods in order, the first that keeps the detections; ``auto``: the best of them all), one
`edgekit build` on 96 crops of scikit-image's photographs: FP32 detections kept (same class, IoU >= 0.5),
mean score error, the method chosen, the layers kept in float, or the refusal. This is agreement with
FP32, not mAP: the models' datasets are not at hand.

Resumable: each finished row is kept in ``bench/results/real-models-state.json``.

With ``--check-on rk3588`` a backend that can (MNN) runs its build checks on the emulated Cortex-A76
board, with MNN's ARM kernels (its x86 INT8 kernels are not repeatable on these models); rows are keyed
``.../mnn/default@rk3588``.

Usage: python bench/real_models.py [--models a,b] [--runtimes onnxruntime,ncnn] [--check-on rk3588] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, save, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.build import build_artifact  # noqa: E402
from edgekit.calib import import_set  # noqa: E402
from edgekit.core.errors import EdgekitError  # noqa: E402
from tests.realmodels.fetch import fetch, models, photo_crops  # noqa: E402

RUNTIMES = ("onnxruntime", "ncnn", "mnn", "tensorrt", "openvino")
#: The heavy 1024 px layout model is measured on ONNX Runtime only (its opset-12 route).
ONLY = {"doclaynet-yolov8n": ("onnxruntime",)}
STATE = RESULTS / "real-models-state.json"


def one(
    name: str, runtime: str, calibrator: str, root: Path, work: Path, check_on: str | None = None
) -> dict:
    spec = models()[name]
    out = work / f"{name}-{runtime}-{calibrator}"
    start = time.perf_counter()
    row = {"model": name, "runtime": runtime, "calibrator": calibrator, "checked_on": check_on or "x86 host"}
    try:
        art = build_artifact(
            runtime, "int8", fetch(name), out, calib="photos", calib_root=root, method=calibrator,
            preprocess=spec["preprocess"] or None, check_on=check_on,
        )  # fmt: skip
    except EdgekitError as exc:
        return {**row, "refused": exc.message[:600], "seconds": round(time.perf_counter() - start, 1)}
    figures = art.meta["parity"].get("detections") or {}
    quant = art.meta.get("quantization") or {}
    search = art.meta.get("calibration_search") or []
    float_layers = (
        quant.get("keep_float")
        or quant.get("float_layers")
        or (art.meta.get("ncnn", {}).get("int8") or {}).get("float_layers")
    )
    return {
        **row,
        "method": quant.get("method"),
        "images": figures.get("images"),
        "detections": figures.get("detections"),
        "kept": figures.get("kept"),
        "score_error": figures.get("score_error"),
        "box_iou": figures.get("box_iou"),
        "float_layers": float_layers,
        "tried": search,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(models()))
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--calibrators", default="default,auto")
    ap.add_argument("--fresh", action="store_true", help="forget the rows of an earlier run")
    ap.add_argument(
        "--check-on", choices=["rpi4", "rk3588"], help="check the builds on an emulated ARM board (MNN)"
    )
    args = ap.parse_args()
    state = {} if args.fresh or not STATE.is_file() else json.loads(STATE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crops = photo_crops(work / "crops", per_photo=12)
        import_set(crops, "photos", root=work / "calibration", progress=False)
        for name in args.models.split(","):
            for runtime in args.runtimes.split(","):
                if runtime not in ONLY.get(name, RUNTIMES):
                    continue
                for calibrator in args.calibrators.split(","):
                    key = f"{name}/{runtime}/{calibrator}" + (f"@{args.check_on}" if args.check_on else "")
                    if key in state:
                        continue
                    state[key] = one(name, runtime, calibrator, work / "calibration", work, args.check_on)
                    print(json.dumps({k: v for k, v in state[key].items() if k != "tried"}), flush=True)
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    STATE.write_text(json.dumps(state, indent=2))
    headers = ["model", "runtime", "calibrator", "method", "kept", "score error", "float layers", "result"]
    rows = [
        [r["model"], r["runtime"], r["calibrator"], r.get("method") or "-", r.get("kept"),
         r.get("score_error"), len(r.get("float_layers") or []),
         "built" if "refused" not in r else r["refused"][:120]]
        for r in state.values()
    ]  # fmt: skip
    print(f"\n{table(headers, rows)}\n")
    print(f"written {save('real-models', {'rows': list(state.values())})}")


if __name__ == "__main__":
    main()
