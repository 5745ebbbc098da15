"""Device-side MNN runner: load + infer with MNN's Module API; the rest is the shared loop in ``runcore.py``.

Never imports edgekit: it is copied to the device with ``runcore.py`` and ``detcore.py`` beside it and
reads everything from the artifact's ``artifact.json`` (threads from ``runtime.threads`` unless
``--threads`` is given, ``runtime.precision`` = MNN's ``high|normal|low``, default ``high``).

MNN's C++ code prints ``The device supports ...`` when ``MNN`` is imported and ``MNN use ... precision``
when a runtime is made, with ``printf`` on file descriptor 1. stdout must carry exactly one JSON line,
so fd 1 points at stderr while MNN is imported, the model is loaded and the first inference runs.

Usage:
    python mnn_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
        [--iterations 1000] [--min-seconds 30] [--threads T] \
        [--eval-inputs E.npy --eval-out O.npz --conf 0.001]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
# On a board the shared cores (runcore.py, detcore.py) are pushed beside this file; in a checkout they are
# in edgekit/runners/.
sys.path[:0] = [str(_HERE)] + (
    [] if (_HERE / "runcore.py").is_file() else [str(_HERE.parents[1] / "runners")]
)

import runcore  # noqa: E402

PRECISIONS = ("high", "normal", "low")


@contextlib.contextmanager
def stdout_to_stderr():
    """Point file descriptor 1 at stderr (C ``printf`` banners included), then restore it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go out while fd 1 is still stderr
        os.dup2(saved, 1)
        os.close(saved)


class MnnRuntime:
    """An MNN CPU module with the artifact's threads and precision; ``infer`` returns ``[1, ...]``."""

    name = "mnn"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        runtime = meta.get("runtime") or {}
        precision = runtime.get("precision") or "high"
        if precision not in PRECISIONS:
            raise runcore.RunnerError(
                f"artifact.json runtime.precision {precision!r} is not one of {PRECISIONS}"
            )
        config = {"backend": runtime.get("backend") or "CPU", "precision": precision}
        if threads:
            config["numThread"] = int(threads)
        model = Path(folder) / meta["files"]["model"]
        with stdout_to_stderr():
            try:
                import MNN
            except ImportError as exc:
                raise runcore.RunnerError(f"MNN is not installed here ({exc}): pip install MNN") from exc
            self._mnn = MNN
            manager = MNN.nn.create_runtime_manager((config,))
            self.net = MNN.nn.load_module_from_file(str(model), [], [], runtime_manager=manager)
        self.version = MNN.version()
        self.threads = threads
        self.precision = precision
        self.out_shape = _static(meta["output"].get("shape"))
        self._first = True

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one ``(1, C, H, W)`` input; return the first output with the ONNX model's shape."""
        if self._first:  # the first forward may still print (lazy backend creation)
            self._first = False
            with stdout_to_stderr():
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        expr = self._mnn.expr
        arr = np.ascontiguousarray(x, dtype=np.float32)
        outputs = self.net.forward([expr.const(arr, list(arr.shape), expr.NCHW)])
        var = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        if var.data_format == expr.NC4HW4:
            var = expr.convert(var, expr.NCHW)
        return _with_batch(np.array(var.read(), dtype=np.float32, copy=True), self.out_shape)


def _static(shape) -> list[int] | None:
    if shape and all(isinstance(d, int) and d > 0 for d in shape):
        return list(shape)
    return None


def _with_batch(y: np.ndarray, shape: list[int] | None) -> np.ndarray:
    """The output in the ONNX model's shape (MNN may drop or keep the batch dim), else with batch 1."""
    if shape is not None and y.size == int(np.prod(shape)):
        return y.reshape(shape)
    return y if y.ndim == 3 else y[None]


if __name__ == "__main__":
    runcore.main(MnnRuntime, "mnn_run")
