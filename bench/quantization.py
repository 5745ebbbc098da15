"""Issues 3 and 4: FP32 vs INT8 per calibrator (head in float or not), latency ratio, calib-set sizes.

Usage: python bench/quantization.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SPEC, device_eval, save, setup, table

from edgekit.calib import import_set
from edgekit.export.onnx import export_onnx
from edgekit.quantize import compare_calibrators, quantize_int8


def calibrators(work: Path, fp32: Path, cs, val) -> list[list]:
    rows, results = [], []
    for method in ("minmax", "entropy", "percentile"):
        for keep in ("auto", None):
            out = work / f"{method}-{keep}.onnx"
            q = quantize_int8(fp32, out, lambda: cs.arrays(), method=method, keep_float=keep, progress=False)
            results.append(q)
            m = device_eval(out, "int8", val, iterations=100, min_seconds=1.0)
            rows.append(
                [method, "float" if keep else "int8", m["map50"], m["map50_95"], q.scales_sha256[:10]]
            )
    return rows, compare_calibrators(results)


def latency_ratio(work: Path, fp32: Path, cs, val, rounds: int) -> dict:
    q = work / "ratio-int8.onnx"
    quantize_int8(fp32, q, lambda: cs.arrays(), method="minmax", keep_float="auto", progress=False)
    fp, i8 = [], []
    for _ in range(rounds):  # alternate so drift hits both alike
        fp.append(device_eval(fp32, "fp32", val, iterations=500, min_seconds=5.0)["p50_ms"])
        i8.append(device_eval(q, "int8", val, iterations=500, min_seconds=5.0)["p50_ms"])
    fp.sort(), i8.sort()
    return {
        "fp32_p50_ms": fp[len(fp) // 2],
        "int8_p50_ms": i8[len(i8) // 2],
        "int8_over_fp32": round(i8[len(i8) // 2] / fp[len(fp) // 2], 3),
        "rounds": rounds,
    }


def calib_sizes(work: Path, root: Path, fp32: Path, val, sizes) -> list[list]:
    rows = []
    for strategy in ("random", "stratified"):
        for n in sizes:
            cs = import_set(
                root,
                f"{strategy}-{n}",
                root=work / "calib",
                from_dataset=True,
                split="train",
                count=n,
                strategy=strategy,
                spec=SPEC,
                seed=1,
            ).set
            out = work / f"{strategy}-{n}.onnx"
            quantize_int8(
                fp32, out, lambda cs=cs: cs.arrays(), method="minmax", keep_float="auto", progress=False
            )
            m = device_eval(out, "int8", val, iterations=50, min_seconds=0.5)
            rows.append([strategy, n, m["map50"], m["map50_95"]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    root, trained, val = setup()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
        cs = import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC).set
        ref = device_eval(fp32, "fp32", val)
        rows, warnings = calibrators(work, fp32, cs, val)
        ratio = latency_ratio(work, fp32, cs, val, 1 if args.quick else 3)
        sizes = calib_sizes(work, root, fp32, val, (8, 32) if args.quick else (8, 32, 128, 512))
    print(f"\nFP32 (ORT, device outputs): mAP@0.5 {ref['map50']:.4f}  mAP@0.5:0.95 {ref['map50_95']:.4f}\n")
    rows = [r[:2] + [r[2], r[3], round((r[3] - ref["map50_95"]) * 100, 2), r[4]] for r in rows]
    print(table(["calibrator", "head", "mAP@0.5", "mAP@0.5:0.95", "Δ50-95 (pts)", "scales hash"], rows))
    print(
        "\n"
        + ("\n".join(warnings) if warnings else "calibrators: all scale hashes differ (none degenerated)")
    )
    print(
        f"\nlatency p50 on this host, 2 threads: FP32 {ratio['fp32_p50_ms']:.3f} ms, "
        f"INT8 {ratio['int8_p50_ms']:.3f} ms, INT8/FP32 = {ratio['int8_over_fp32']:.3f} "
        f"(median of {ratio['rounds']} alternating rounds)\n"
    )
    sizes = [r + [round((r[3] - ref["map50_95"]) * 100, 2)] for r in sizes]
    print(table(["sampling", "images", "mAP@0.5", "mAP@0.5:0.95", "Δ50-95 (pts)"], sizes))
    path = save(
        "quantization",
        {
            "fp32": ref,
            "calibrators": rows,
            "warnings": warnings,
            "latency": ratio,
            "calib_sizes": sizes,
            "reference_checkpoint": str(trained.path),
        },
    )
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
