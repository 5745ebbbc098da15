"""Cold and warm wall time of `make deploy TARGET=local` (fresh cache, then the same cache again)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SPEC, device_eval, emulated_avx2_python, save

REPO = Path(__file__).resolve().parents[1]


def timed_deploy(cache: Path, out: Path, run_id: str) -> float:
    env = {**os.environ, "EDGEKIT_CACHE": str(cache)}
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "deploy",
            "--target",
            "local",
            "--quiet",
            "--out",
            str(out),
            "--run-id",
            run_id,
            "--calib-root",
            str(out / "calibration"),
        ],
        check=True,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def int8_step(run: Path, work: Path) -> dict:
    """The deployed default's INT8 step: its FP32 ONNX against INT8 at 8 and 7 bits, here and on AVX2.

    Same calibration set as the deploy; the AVX2 column runs ONNX Runtime's AVX2 kernels under
    ``qemu-x86_64 -cpu Haswell`` (accuracy only).
    """
    from edgekit.calib import CalibrationSet
    from edgekit.data.dataset import YoloDataset
    from edgekit.data.shapes import ShapesConfig, builtin_dataset
    from edgekit.models.train import InMemorySplit
    from edgekit.models.zoo import cache_dir
    from edgekit.quantize import quantize_int8

    val = InMemorySplit(YoloDataset(builtin_dataset(cache_dir(), ShapesConfig(image_size=160)), "val"), SPEC)
    fp32 = run / "model_fp32.onnx"
    cs = CalibrationSet.load("shapes-hard", root=run.parent / "calibration")
    avx2 = emulated_avx2_python(work)
    out = {"fp32_here": device_eval(fp32, "fp32", val, iterations=50, min_seconds=0.5)["map50_95"]}
    if avx2:
        out["fp32_avx2"] = device_eval(fp32, "fp32", val, iterations=3, min_seconds=0.0, python=avx2)[
            "map50_95"
        ]
    for bits in (8, 7):
        q = work / f"default-w{bits}.onnx"
        quantize_int8(fp32, q, lambda: cs.arrays(spec=SPEC), reduce_range=bits == 7, progress=False)
        out[f"w{bits}_here"] = device_eval(q, "int8", val, iterations=50, min_seconds=0.5)["map50_95"]
        if avx2:
            out[f"w{bits}_avx2"] = device_eval(q, "int8", val, iterations=3, min_seconds=0.0, python=avx2)[
                "map50_95"
            ]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "runs"
        cold = timed_deploy(cache, out, "cold")
        warm = timed_deploy(cache, out, "warm")
        os.environ["EDGEKIT_CACHE"] = str(cache)
        step = int8_step(out / "warm", Path(tmp))
    print(
        f"make deploy TARGET=local on {os.cpu_count()} cores: cold {cold:.1f} s, warm (cached) {warm:.1f} s"
    )
    pts = {k: round((v - step[f"fp32_{k.split('_')[1]}"]) * 100, 2) for k, v in step.items() if k[0] == "w"}
    print(f"deployed default, INT8 step (mAP@0.5:0.95 points vs its FP32): {pts}")
    payload = {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "cores": os.cpu_count()}
    print(save("deploy_time", {**payload, "int8_step": step, "int8_step_points": pts}))


if __name__ == "__main__":
    main()
