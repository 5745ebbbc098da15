"""Cold and warm wall time of `make deploy TARGET=local` (fresh cache, then the same cache again)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save

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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "runs"
        cold = timed_deploy(cache, out, "cold")
        warm = timed_deploy(cache, out, "warm")
    print(
        f"make deploy TARGET=local on {os.cpu_count()} cores: cold {cold:.1f} s, warm (cached) {warm:.1f} s"
    )
    print(save("deploy_time", {"cold_s": round(cold, 1), "warm_s": round(warm, 1), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
