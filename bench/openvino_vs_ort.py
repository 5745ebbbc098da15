"""Issue 42: OpenVINO against ONNX Runtime on this CPU, same model, same calibration set, one run.

The converged reference detector (160 px, the default deploy's model and calibration split) is built
fp32 and INT8 for both runtimes with ``edgekit build``'s default search (ORT: QDQ from
``edgekit.quantize`` in this host's form; OpenVINO: NNCF). Each artifact runs through the agent and its
runner, as a deploy measures it: mAP@0.5:0.95 from its own outputs on the val split, and latency
p50 / p99 at 1 and 2 threads. The two runtimes are timed alternately, ``--rounds`` times each, and the
ratios OpenVINO / ONNX Runtime are taken per round, then their median (load on the host moves both).

Usage: python bench/openvino_vs_ort.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import SPEC, save, setup, table

from edgekit.build import build_artifact
from edgekit.calib import import_set
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.transport import LocalTransport
from edgekit.export.onnx import export_onnx
from edgekit.models.train import map_from_candidates

RUNTIMES = ("onnxruntime", "openvino")


def timed(art, x: np.ndarray, threads: int, seconds: float, val=None) -> dict:
    plan = BenchPlan(
        x[:1], x if val is not None else None, warmup=50, min_warmup_s=1.0, iterations=300,
        min_seconds=seconds, threads=threads,
    )  # fmt: skip
    res = Agent(LocalTransport()).bench(art.dir, plan, progress=False)
    out = {"p50": res.stats["p50"], "p99": res.stats["p99"], "raw": res.raw}
    if val is not None:
        out.update(map_from_candidates(val, res.detections))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    root, trained, val = setup()
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    rows, ratios, layers = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
        import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC)
        arts = {
            (rt, p): build_artifact(rt, p, fp32, work / f"{rt}-{p}", calib="bench", calib_root=work / "calib")
            for rt in RUNTIMES
            for p in ("fp32", "int8")
        }
        maps = {key: timed(art, inputs, 1, 1.0, val)["map50_95"] for key, art in arts.items()}
        base = maps[("onnxruntime", "fp32")]
        for precision in ("fp32", "int8"):
            for threads in (1, 2):
                per_round = {rt: [] for rt in RUNTIMES}
                for _ in range(args.rounds):
                    for rt in RUNTIMES:  # alternate: both see the same host load
                        per_round[rt].append(timed(arts[(rt, precision)], inputs, threads, args.seconds))
                for stat in ("p50", "p99"):
                    r = [
                        o[stat] / n[stat]
                        for o, n in zip(per_round["openvino"], per_round["onnxruntime"], strict=True)
                    ]
                    ratios.append([precision, threads, stat, round(statistics.median(r), 3)])
                for rt in RUNTIMES:
                    med = {s: statistics.median(o[s] for o in per_round[rt]) for s in ("p50", "p99")}
                    art = arts[(rt, precision)]
                    method = (art.meta.get("quantization") or {}).get("method") or "-"
                    rows.append(
                        [
                            rt,
                            precision,
                            method,
                            threads,
                            round(med["p50"], 3),
                            round(med["p99"], 3),
                            round(maps[(rt, precision)], 4),
                            round((maps[(rt, precision)] - base) * 100, 2),
                        ]
                    )
                    if rt == "openvino" and threads == 1:
                        layers[precision] = (
                            per_round[rt][-1]["raw"].get("openvino", {}).get("layers", [])[:10]
                        )
                        floats = (art.meta.get("quantization") or {}).get("float_layers")
                        layers[f"{precision}_float_layers"] = floats
    headers = [
        "runtime",
        "precision",
        "method",
        "threads",
        "p50 ms",
        "p99 ms",
        "mAP@0.5:0.95",
        "Δ vs ORT fp32",
    ]
    print(f"\n{table(headers, rows)}\n")
    print(table(["precision", "threads", "stat", "OpenVINO / ORT"], ratios))
    payload = {"headers": headers, "rows": rows, "ratios": ratios, "openvino_layers": layers,
               "rounds": args.rounds, "seconds": args.seconds, "checkpoint": str(trained.path)}  # fmt: skip
    print(f"written {save('openvino-vs-ort', payload)}")


if __name__ == "__main__":
    main()
