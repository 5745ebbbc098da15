"""Issue 14: ORT, MNN and ncnn x fp32 / fp16 / int8, side by side in one run, on the hard shapes set.

For every artifact: mAP@0.5:0.95 from the runtime's own outputs (through the agent and the runner, as
a deploy measures it) against ORT FP32, latency p50/p90 at 1 and 2 threads on this host, and the
runner's overhead: its p50 against a bare loop timing the same runtime call in one process.

Usage: python bench/runtimes.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SPEC, save, setup, table

from edgekit.backends.contract.base import Artifact
from edgekit.calib import import_set
from edgekit.core.errors import BuildError
from edgekit.core.registry import BACKENDS
from edgekit.device.agent import Agent, BenchPlan, runner_path
from edgekit.device.transport import LocalTransport
from edgekit.export.onnx import export_onnx, export_torchscript
from edgekit.models.train import map_from_candidates
from edgekit.quantize import quantize_int8
from edgekit.quantize.form import host_qdq_form

RUNNERS = Path(__file__).resolve().parents[1] / "edgekit" / "runners"
PLAN = {"onnxruntime": ("fp32", "int8"), "mnn": ("fp32", "fp16", "int8"), "ncnn": ("fp32", "fp16", "int8")}


def build(backend: str, precision: str, fp32: Path, ts: Path, cs, work: Path, method: str | None) -> Artifact:
    be = BACKENDS.create(backend)
    src, quantizer = fp32, None
    if precision == "int8" and be.int8_source == "qdq":
        form = host_qdq_form()
        src = work / f"{backend}-qdq.onnx"
        res = quantize_int8(
            fp32,
            src,
            lambda: cs.arrays(spec=SPEC),
            reduce_range=form.reduce_range,
            keep_float="auto",
            progress=False,
        )
        quantizer = {"method": res.method, "weight_bits": res.weight_bits, "keep_float": res.excluded_nodes}
    elif precision == "int8":
        quantizer = {"method": method}
    # a dict: the backend parses "quantizer" into its own options model
    options = {"precision": precision, "preprocess": SPEC, "num_classes": 6, "quantizer": quantizer}
    out = work / f"{backend}-{precision}-{method or ''}"
    return be.build(src, options, out, calib=cs, reference=fp32, torch_program=ts)


def runner_stats(
    art: Artifact, inputs: np.ndarray, threads: int, iterations: int, seconds: float, val
) -> dict:
    res = Agent(LocalTransport()).bench(
        art.dir,
        BenchPlan(
            bench_input=inputs[:1],
            eval_inputs=inputs if val is not None else None,
            warmup=50,
            min_warmup_s=1.0,
            iterations=iterations,
            min_seconds=seconds,
            threads=threads,
        ),
        progress=False,
    )
    out = {"p50": res.stats["p50"], "p90": res.stats["p90"]}
    if val is not None:
        out.update(map_from_candidates(val, res.detections))
    return out


def bare_loop_p50(art: Artifact, x: np.ndarray, threads: int, iterations: int) -> float:
    """The runtime's own call timed in a plain loop (the runner's Runtime class, no agent, no runner)."""
    sys.path.insert(0, str(RUNNERS))
    name = art.runner.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, runner_path(art.runner))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runtime_cls = next(
        v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == art.backend
    )
    import runcore

    rt = runtime_cls(art.meta, str(art.dir), threads)
    feed = runcore.to_model_input(x, art.meta)
    for _ in range(50):
        rt.infer(feed)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        rt.infer(feed)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    iterations, seconds = (200, 1.0) if args.quick else (1000, 5.0)
    root, trained, val = setup()
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    rows, refused = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
        ts = export_torchscript(trained.model, SPEC.input_shape(), work / "fp32.pt")
        cs = import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC).set
        ref = None
        for backend, precisions in PLAN.items():
            be = BACKENDS.get(backend)
            for precision in precisions:
                methods = [None] if precision != "int8" or be.int8_source == "qdq" else list(be.methods)
                for method in methods:
                    try:
                        art = build(backend, precision, fp32, ts, cs, work, method)
                    except BuildError as exc:  # refused by the FP32 check: a finding, not a crash
                        rows.append([backend, precision, method, None, None] + [None] * 6)
                        refused.append(f"{backend} {precision} {method}: {exc.message}")
                        print("   refused:", refused[-1], flush=True)
                        continue
                    one = runner_stats(art, inputs, 1, iterations, seconds, val)
                    two = runner_stats(art, inputs, 2, iterations, seconds, None)
                    bare = bare_loop_p50(art, inputs[:1], 1, iterations)
                    ref = ref or one["map50_95"]
                    row = [
                        backend,
                        precision,
                        method
                        or art.meta.get("quantization", {})
                        and art.meta["quantization"].get("method")
                        or "-",
                    ]
                    row += [one["map50_95"], round((one["map50_95"] - ref) * 100, 2)]
                    row += [one["p50"], one["p90"], two["p50"], two["p90"], bare]
                    row += [round((one["p50"] / bare - 1) * 100, 1)]
                    rows.append(row)
                    print("  ", row, flush=True)
    headers = ["runtime", "precision", "method", "mAP@0.5:0.95", "Δ vs ORT fp32 (pts)", "p50 1t", "p90 1t"]
    headers += ["p50 2t", "p90 2t", "bare-loop p50 1t", "runner overhead %"]
    print(f"\n{table(headers, rows)}\n")
    print("\n".join(f"refused by the build's FP32 check: {r}" for r in refused))
    payload = {"headers": headers, "rows": rows, "refused": refused, "checkpoint": str(trained.path)}
    path = save("runtimes", payload)
    print(f"written {path}")


if __name__ == "__main__":
    main()
