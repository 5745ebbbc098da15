"""Issue 16: TFLite Micro INT8 of the reference and a compressed detector at 96/128/160 px; what fits where.

For each (recipe, input size): `edgekit deploy` to an STM32 target with `--device local` (the TFLM
interpreter on this host, the firmware's reference kernels) and no board limit, so every build completes;
then the int8 `.tflite` size against the FP32 ONNX, mAP@0.5:0.95 from the TFLM outputs against the FP32
reference, the arena (measured two ways), and flash / RAM against STM32H7 (2 MB / 1 MB), F7 (1 MB / 320 KB)
and F4 (1 MB / 192 KB).

Usage: python bench/mcu.py [--quick] [--recipes none,mcu,microyolo] [--sizes 96,128,160] [--reference quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml
from common import save, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.core.config import load_target  # noqa: E402
from edgekit.pipeline import DeployRequest, deploy  # noqa: E402

RESULTS = REPO / "bench" / "results" / "mcu.json"
BOARDS = {"STM32H7": (2048, 1024), "STM32F7": (1024, 320), "STM32F4": (1024, 192)}


def run(
    work: Path, recipe: str, size: int, reference: str = "converged", calibrator: str | None = None
) -> dict:
    """One deploy at ``size`` px with ``recipe``; the figures of its record and artifact."""
    spec = yaml.safe_load(Path(load_target("stm32h7").source).read_text())
    spec.update({"name": f"mcu-{size}", "input_size": size, "limits": {"core": "cortex-m7"}})
    target = work / f"mcu-{size}.yaml"
    target.write_text(yaml.safe_dump(spec))
    run_dir = deploy(
        DeployRequest(
            target=str(target), device="local", recipe=recipe, out=work / "runs",
            run_id=f"{recipe}-{size}", progress=False, command=["bench/mcu.py"], reference=reference,
            calibrator=calibrator,
        )
    )  # fmt: skip
    record = json.loads((run_dir / "record.json").read_text())
    nodes = {n["stage"]: n for n in record["nodes"]}
    art = json.loads((run_dir / "artifact" / "artifact.json").read_text())
    tflm, budget = art["tflm"], art["tflm"]["budget"]
    onnx_bytes = (run_dir / "model_fp32.onnx").stat().st_size
    ref, dep = nodes["reference"]["metrics"], nodes["eval"]["metrics"]
    comp = [n for n in record["nodes"] if n["stage"].startswith("compress:")]
    fp32 = comp[-1]["metrics"]["map50_95"] if comp else ref["map50_95"]  # the model TFLM got, in float
    row = {
        "recipe": recipe,
        "size": size,
        "params": dep.get("params"),
        "fp32_onnx_bytes": onnx_bytes,
        "int8_tflite_bytes": budget["model_bytes"],
        "size_ratio": round(budget["model_bytes"] / onnx_bytes, 3),
        "fp32_map50_95": ref["map50_95"],
        "tflm_map50_95": dep["map50_95"],
        "drop_pts": round((ref["map50_95"] - dep["map50_95"]) * 100, 2),
        "compressed_fp32_map50_95": fp32,
        "int8_drop_pts": round((fp32 - dep["map50_95"]) * 100, 2),
        "arena_recorded": tflm["arena"]["recorded_bytes"],
        "arena_bisected": tflm["arena"]["bisected_bytes"],
        "flash_bytes": budget["flash_bytes"],
        "ram_bytes": budget["ram_bytes"],
        "arm_size_text": (tflm.get("compiled") or {}).get("text"),
        "tflm_p50_ms_host": nodes["bench"]["metrics"]["latency_ms"]["p50"],
        "method": nodes["build"]["config"].get("method"),
        "candidates": [
            {k: c.get(k) for k in ("method", "map50_95", "drop", "error")}
            for c in nodes["build"].get("extra", {}).get("candidates", [])
        ],
    }
    row["fits"] = [
        b
        for b, (flash, ram) in BOARDS.items()
        if row["flash_bytes"] <= flash * 1024 and row["ram_bytes"] <= ram * 1024
    ]
    print("  ", row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--recipes", default="none,mcu,microyolo")
    ap.add_argument("--sizes", default="96,128,160")
    ap.add_argument(
        "--reference",
        choices=("converged", "quick"),
        default="converged",
        help="the built-in model's training (converged: shipped or trained once per size, long)",
    )
    ap.add_argument(
        "--calibrator",
        default=None,
        help="TFLM activation ranges: histogram, minmax, or auto (build both, keep the better on TFLM)",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of bench/results/mcu.json for other (recipe, size) pairs (one table from runs)",
    )
    args = ap.parse_args()
    recipes = ["none"] if args.quick else args.recipes.split(",")
    sizes = [96] if args.quick else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(Path(tmp), r, s, args.reference, args.calibrator) for r in recipes for s in sizes]
    if args.append and RESULTS.is_file():
        done = {(r["recipe"], r["size"]) for r in rows}
        kept = [r for r in json.loads(RESULTS.read_text())["rows"] if (r["recipe"], r["size"]) not in done]
        rows = kept + rows
    headers = [
        "recipe",
        "px",
        "int8 KB",
        "/FP32",
        "FP32 mAP",
        "TFLM mAP",
        "Δ pts",
        "int8 Δ",
        "arena KB",
        "flash KB",
        "RAM KB",
        "fits",
    ]  # noqa: E501
    print(
        "\n"
        + table(
            headers,
            [
                [
                    r["recipe"],
                    r["size"],
                    round(r["int8_tflite_bytes"] / 1024, 1),
                    r["size_ratio"],
                    r["fp32_map50_95"],
                    r["tflm_map50_95"],
                    r["drop_pts"],
                    r.get("int8_drop_pts"),
                    round(r["arena_bisected"] / 1024, 1),
                    round(r["flash_bytes"] / 1024),
                    round(r["ram_bytes"] / 1024),
                    ", ".join(r["fits"]) or "none",
                ]
                for r in rows
            ],  # fmt: skip
        )
    )
    print(
        "\nflash = model + ~100 KB TFLM runtime; RAM = arena x 1.05 + ~16 KB (both runtime parts estimated)"
    )
    print(f"\nwritten {save('mcu', {'rows': rows, 'boards_kb': BOARDS})}")


if __name__ == "__main__":
    main()
