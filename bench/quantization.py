"""Issues 3 and 4: FP32 vs INT8 per calibrator (head in float or not), latency ratio, calib-set sizes.

Usage: python bench/quantization.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SPEC, device_eval, emulated_avx2_python, save, setup, table

from edgekit.calib import import_set
from edgekit.export.onnx import export_onnx
from edgekit.quantize import compare_calibrators, quantize_int8
from edgekit.quantize.form import host_qdq_form

HOST_FORM = host_qdq_form()


def calibrators(work: Path, fp32: Path, cs, val, avx2: str | None, refs: dict) -> tuple[list[list], list]:
    """Every calibrator x head x weight range; mAP on this host and on the emulated AVX2 CPU."""
    rows, results = [], []
    for method in ("minmax", "entropy", "percentile"):
        for keep in ("auto", None):
            for reduce_range in (False, True):
                out = work / f"{method}-{keep}-{int(reduce_range)}.onnx"
                q = quantize_int8(
                    fp32,
                    out,
                    lambda: cs.arrays(),
                    method=method,
                    keep_float=keep,
                    reduce_range=reduce_range,
                    progress=False,
                )
                if not reduce_range:
                    results.append(q)
                here = device_eval(out, "int8", val, iterations=100, min_seconds=1.0)
                row = [method, "float" if keep else "int8", q.weight_bits, here["map50"], here["map50_95"]]
                row.append(round((here["map50_95"] - refs["here"]["map50_95"]) * 100, 2))
                if avx2:
                    emu = device_eval(out, "int8", val, iterations=3, min_seconds=0.0, python=avx2)
                    row += [emu["map50_95"], round((emu["map50_95"] - refs["avx2"]["map50_95"]) * 100, 2)]
                rows.append(row + [q.scales_sha256[:10]])
                print("  ", row, flush=True)
    return rows, compare_calibrators(results)


def latency_ratio(work: Path, fp32: Path, cs, val, rounds: int) -> dict:
    """INT8/FP32 p50 on this host for 8-bit and 7-bit weights, alternating so drift hits all alike."""
    models = {}
    for reduce_range in (False, True):
        models[reduce_range] = work / f"ratio-int8-{int(reduce_range)}.onnx"
        quantize_int8(
            fp32,
            models[reduce_range],
            lambda: cs.arrays(),
            method="minmax",
            keep_float="auto",
            reduce_range=reduce_range,
            progress=False,
        )
    times: dict[str, list[float]] = {"fp32": [], "w8": [], "w7": []}
    for _ in range(rounds):
        times["fp32"].append(device_eval(fp32, "fp32", val, iterations=500, min_seconds=5.0)["p50_ms"])
        for reduce_range, key in ((False, "w8"), (True, "w7")):
            p50 = device_eval(models[reduce_range], "int8", val, iterations=500, min_seconds=5.0)["p50_ms"]
            times[key].append(p50)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "fp32_p50_ms": med["fp32"],
        "int8_w8_p50_ms": med["w8"],
        "int8_w7_p50_ms": med["w7"],
        "w8_over_fp32": round(med["w8"] / med["fp32"], 3),
        "w7_over_fp32": round(med["w7"] / med["fp32"], 3),
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
                fp32,
                out,
                lambda cs=cs: cs.arrays(),
                method="minmax",
                keep_float="auto",
                reduce_range=HOST_FORM.reduce_range,
                progress=False,
            )
            m = device_eval(out, "int8", val, iterations=50, min_seconds=0.5)
            rows.append([strategy, n, m["map50"], m["map50_95"]])
    return rows


def cpu_line(cpu: dict) -> str:
    feats = ", ".join(f for f in cpu.get("features", []) if f.startswith(("avx", "amx")))
    name = cpu.get("model") or cpu.get("arch")
    return f"{name} ({feats or 'no AVX'}; INT8 dot product: {cpu.get('int8_dot')})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    root, trained, val = setup()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        avx2 = emulated_avx2_python(work)
        fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
        cs = import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC).set
        refs = {"here": device_eval(fp32, "fp32", val)}
        print(f"this host: {cpu_line(refs['here']['cpu'])}; deploy form: {HOST_FORM.reason}")
        if avx2:
            refs["avx2"] = device_eval(fp32, "fp32", val, iterations=3, min_seconds=0.0, python=avx2)
            print(f"emulated: {cpu_line(refs['avx2']['cpu'])} (qemu-x86_64 -cpu Haswell; accuracy only)")
        rows, warnings = calibrators(work, fp32, cs, val, avx2, refs)
        ratio = latency_ratio(work, fp32, cs, val, 1 if args.quick else 3)
        sizes = calib_sizes(work, root, fp32, val, (8, 32) if args.quick else (8, 32, 128, 512))
    ref = refs["here"]
    print(f"\nFP32 (ORT, device outputs): mAP@0.5 {ref['map50']:.4f}  mAP@0.5:0.95 {ref['map50_95']:.4f}")
    print(f"this host: {cpu_line(ref['cpu'])}\n")
    headers = ["calibrator", "head", "weight bits", "mAP@0.5", "mAP@0.5:0.95", "Δ50-95 here (pts)"]
    if avx2:
        headers += ["mAP@0.5:0.95 AVX2", "Δ50-95 AVX2 (pts)"]
    print(table([*headers, "scales hash"], rows))
    print(
        "\n"
        + ("\n".join(warnings) if warnings else "calibrators: all scale hashes differ (none degenerated)")
    )
    print(
        f"\nlatency p50 on this host, 2 threads: FP32 {ratio['fp32_p50_ms']:.3f} ms, "
        f"INT8 8-bit {ratio['int8_w8_p50_ms']:.3f} ms ({ratio['w8_over_fp32']:.3f}x), "
        f"INT8 7-bit {ratio['int8_w7_p50_ms']:.3f} ms ({ratio['w7_over_fp32']:.3f}x) "
        f"(median of {ratio['rounds']} alternating rounds)\n"
    )
    sizes = [r + [round((r[3] - ref["map50_95"]) * 100, 2)] for r in sizes]
    print(table(["sampling", "images", "mAP@0.5", "mAP@0.5:0.95", "Δ50-95 (pts)"], sizes))
    path = save(
        "quantization",
        {
            "host_cpu": ref["cpu"],
            "host_form": HOST_FORM.to_dict(),
            "emulated_avx2": refs.get("avx2"),
            "fp32": ref,
            "calibrators": rows,
            "calibrator_headers": headers,
            "warnings": warnings,
            "latency": ratio,
            "calib_sizes": sizes,
            "reference_checkpoint": str(trained.path),
        },
    )
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
