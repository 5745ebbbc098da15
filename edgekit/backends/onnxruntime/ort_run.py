"""Device-side ONNX Runtime runner: load + infer; everything else is the shared loop in ``runcore.py``.

Never imports edgekit: it is copied to the device with ``runcore.py`` and ``detcore.py`` beside it and
reads everything from the artifact's ``artifact.json``. Progress goes to stderr as
``@progress <phase> <done> <total>``; stdout carries exactly one JSON line with the results.

Usage:
    python ort_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
        [--iterations 1000] [--min-seconds 30] [--threads T] \
        [--eval-inputs E.npy --eval-out O.npz --conf 0.001]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# On a board the shared cores (runcore.py, detcore.py) are pushed beside this file; in a checkout they are
# in edgekit/runners/.
sys.path[:0] = [str(_HERE)] + (
    [] if (_HERE / "runcore.py").is_file() else [str(_HERE.parents[1] / "runners")]
)

import runcore  # noqa: E402


class OrtRuntime:
    """An ONNX Runtime CPU session with the requested intra-op threads (0 = ORT default)."""

    name = "onnxruntime"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        model = Path(folder) / meta["files"]["model"]
        self.session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = meta["input"]["name"]
        self.version = ort.__version__
        self.threads = threads

    def infer(self, x):
        """Run one input; return the first output."""
        return self.session.run(None, {self.input_name: x})[0]


if __name__ == "__main__":
    runcore.main(OrtRuntime, "ort_run")
