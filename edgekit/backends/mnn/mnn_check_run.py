"""Board-side MNN check run: every input through a ``.mnn`` model, ``--repeat`` times each.

Never imports edgekit (it is pushed to a board and run by the board's Python with its MNN). Writes
``out.npz`` with ``o<input>_<repeat>_<output>`` arrays (batch dim kept), so the host can judge the
model's detections against FP32 and check that two runs of one input agree, on the board's own kernels.

Usage: python mnn_check_run.py --model M.mnn --inputs X.npy --out out.npz [--repeat 1] [--precision high]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Run the inputs and write ``out.npz``; 0 on success."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--precision", default="high", choices=["high", "normal", "low"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    saved = os.dup(1)
    os.dup2(2, 1)  # MNN prints banners on fd 1 from C++
    try:
        import MNN

        config = {"backend": "CPU", "precision": args.precision, "numThread": args.threads}
        runtime = MNN.nn.create_runtime_manager((config,))
        net = MNN.nn.load_module_from_file(args.model, [], [], runtime_manager=runtime)
        xs = np.load(args.inputs)
        out = {}
        for i in range(xs.shape[0]):
            x = np.ascontiguousarray(xs[i : i + 1], dtype=np.float32)
            for r in range(args.repeat):
                ys = net.forward([MNN.expr.const(x, list(x.shape), MNN.expr.NCHW)])
                for k, y in enumerate(ys if isinstance(ys, list) else [ys]):
                    if y.data_format == MNN.expr.NC4HW4:
                        y = MNN.expr.convert(y, MNN.expr.NCHW)
                    out[f"o{i}_{r}_{k}"] = np.array(y.read(), dtype=np.float32).reshape(y.shape)
            print(f"@progress {i + 1}/{xs.shape[0]}", file=sys.stderr, flush=True)
    finally:
        os.dup2(saved, 1)
    np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
