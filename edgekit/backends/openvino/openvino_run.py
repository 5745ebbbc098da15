"""Device-side OpenVINO runner: load + infer on OpenVINO's CPU plugin; the rest is ``runcore.py``'s loop.

Never imports edgekit: it is copied to the device with ``runcore.py`` and ``detcore.py`` beside it and
reads everything from the artifact's ``artifact.json``: ``runtime.device`` (``CPU``),
``runtime.inference_precision`` (``f32``; ``f16`` where the CPU has fp16 arithmetic, else ``f32`` and
the report says so), ``runtime.num_streams``, ``runtime.performance_hint`` and the threads. After the
timed loop, a second compiled model with OpenVINO's profiling counters on gives the per-layer times
(kept out of the timed loop, whose latencies they would change).

Usage:
    python openvino_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
        [--iterations 1000] [--min-seconds 30] [--threads T] \
        [--eval-inputs E.npy --eval-out O.npz --conf 0.001]
"""

from __future__ import annotations

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

#: Profiled inferences for the per-layer times, and how many layers the report keeps.
PROFILE_RUNS, TOP_LAYERS = 20, 25


class OpenVinoRuntime:
    """An OpenVINO compiled model with the artifact's device, precision, streams and threads."""

    name = "openvino"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise runcore.RunnerError(
                f"OpenVINO is not installed here ({exc}): pip install openvino"
            ) from exc
        runtime = meta.get("runtime") or {}
        self.core = ov.Core()
        self.device = runtime.get("device") or "CPU"
        asked = runtime.get("inference_precision") or "f32"
        self.precision = asked
        if asked == "f16" and "FP16" not in self.core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"):
            self.precision = "f32"  # no fp16 arithmetic on this CPU: say so rather than let bf16 in
        self.config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": runtime.get("performance_hint") or "LATENCY",
            "NUM_STREAMS": str(int(runtime.get("num_streams") or 1)),
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.model = str(Path(folder) / meta["files"]["model"])
        self.request = self.core.compile_model(self.model, self.device, self.config).create_infer_request()
        self.version = ov.__version__.split("-")[0]
        self.threads = threads
        self.asked = asked
        self.last = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one ``(1, C, H, W)`` input; return the first output (a copy)."""
        self.last = x
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def report(self) -> dict:
        """The precision really used and per-layer times from OpenVINO's profiling counters."""
        return {"openvino": {
            "device": self.device,
            "inference_precision": self.precision,
            "inference_precision_asked": self.asked,
            "layers": self._layers(),
        }}  # fmt: skip

    def _layers(self) -> list[dict]:
        if self.last is None:
            return []
        request = self.core.compile_model(self.model, self.device, {**self.config, "PERF_COUNT": True})
        request = request.create_infer_request()
        totals: dict[str, list] = {}
        for _ in range(PROFILE_RUNS):
            request.infer({0: np.ascontiguousarray(self.last, dtype=np.float32)})
            for info in request.get_profiling_info():
                if str(info.status).endswith("EXECUTED"):
                    row = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
                    row[2] += info.real_time.total_seconds() * 1e3
        rows = sorted(totals.items(), key=lambda kv: -kv[1][2])[:TOP_LAYERS]
        return [
            {"layer": name, "type": t, "kernel": k, "ms": round(ms / PROFILE_RUNS, 4)}
            for name, (t, k, ms) in rows
        ]


if __name__ == "__main__":
    runcore.main(OpenVinoRuntime, "openvino_run")
