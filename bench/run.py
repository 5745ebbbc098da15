"""`make bench`: every long measurement, one after the other, in one run (results in bench/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "deploy_time.py",
    "quantization.py",
    "runtimes.py",
    "arm_boards.py",
    "fleet.py",
    "openvino_vs_ort.py",
    "real_models.py",
    "foreign_real.py",
    "foreign_arch.py",
    "swap_init.py",
    "compression.py",
    "device.py",
    "mcu.py",
]


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for script in SCRIPTS:
        print(f"\n===== {script} =====", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *extra], cwd=HERE).returncode:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
