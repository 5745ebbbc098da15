"""Device-side TFLite Micro runner: the ``tflite-micro`` interpreter behind the shared runner loop.

The interpreter runs the reference kernels an MCU's firmware runs; ``runcore.py`` does the rest.

Never imports edgekit: copied to the device with ``runcore.py`` and ``detcore.py`` beside it. The model
is full-integer: the float NCHW input the agent sends is put in the model's layout and quantized with its
input scale and zero point, each raw prediction map is dequantized with its own scale, and the maps are
decoded to ``yolov5`` rows with ``detcore.decode_raw`` (the decode does not fit in int8 on the device),
or, for a user's ONNX, by that ONNX's own decode tail in ONNX Runtime (its output layout, untouched).
On a host this runs the same interpreter the firmware's kernels are checked against; on an MCU board the
serial runner takes its place.

Usage:
    python tflm_run.py --artifact DIR [--inputs X.npy] [--iterations 100] [--min-seconds 10] \
        [--eval-inputs E.npy --eval-out O.npz]
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

import numpy as np  # noqa: E402
import runcore  # noqa: E402


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """``q = clip(round(x / scale) + zero_point)`` in the dtype's range."""
    info = np.iinfo(np.dtype(dtype))
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``x = (q - zero_point) * scale``."""
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TflmRuntime:
    """The TFLite Micro interpreter on an artifact's full-integer model (threads: always one)."""

    name = "tflm"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        try:
            from tflite_micro import runtime
        except ImportError as exc:
            raise runcore.RunnerError("tflite-micro is not installed here: pip install tflite-micro") from exc
        import importlib.metadata

        self.meta = meta
        self.tflm = meta["tflm"]
        model = Path(folder) / meta["files"]["model"]
        try:
            self.interpreter = runtime.Interpreter.from_file(
                str(model), arena_size=int(self.tflm["host_arena_bytes"])
            )
        except RuntimeError as exc:
            raise runcore.RunnerError(f"TFLite Micro cannot allocate the model: {exc}") from exc
        self.version = importlib.metadata.version("tflite-micro")
        self.threads = 1
        self.tail = None
        if self.tflm["decode"].get("kind") == "onnx-tail":
            self.tail = _tail_session(Path(folder) / meta["files"]["decode_tail"])

    def to_input(self, x: np.ndarray) -> np.ndarray:
        """Float NCHW (what the agent sends) -> the model's int8 input."""
        spec = self.tflm["input"]
        if spec["layout"] == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        return quantize(
            np.ascontiguousarray(x, dtype=np.float32), spec["scale"], spec["zero_point"], spec["dtype"]
        )

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One input: float ``yolov5`` rows ``[1, N, 5 + nc]`` decoded from the dequantized raw maps."""
        import detcore

        q = x if x.dtype.kind == "i" else self.to_input(x)
        self.interpreter.set_input(q, 0)
        self.interpreter.invoke()
        layout = self.tflm["outputs"][0]["layout"]
        maps = assemble(self.tflm, self.interpreter.get_output)
        if self.tail is not None:
            # a user ONNX: its own decode (the graph after its prediction convs) on the NCHW maps
            feeds = {
                spec["name"]: np.ascontiguousarray(m.transpose(0, 3, 1, 2) if layout == "NHWC" else m)
                for spec, m in zip(self.tflm["decode"]["maps"], maps, strict=True)
            }
            return self.tail.run(None, feeds)[0]
        return detcore.decode_raw(maps, self.tflm["decode"], layout=layout)


def tflite_outputs(tflm: dict) -> list[dict]:
    """Every int8 output of the model (the parts of a split map included), in the model's output order."""
    parts = [p for o in tflm["outputs"] for p in o.get("parts", [o])]
    return sorted(parts, key=lambda p: int(p["index"]))


def assemble(tflm: dict, raw_of) -> list[np.ndarray]:
    """The dequantized raw maps; ``raw_of(index)`` gives a model output's int8 array.

    A map split into channel groups (each its own int8 output and scale) is put back in channel order.
    """
    layout = tflm["outputs"][0]["layout"]
    axis = 3 if layout == "NHWC" else 1
    maps = []
    for out in tflm["outputs"]:
        if "parts" not in out:
            maps.append(dequantize(raw_of(int(out["index"])), out["scale"], out["zero_point"]))
            continue
        full = np.empty(out["shape"], dtype=np.float32)
        for part in out["parts"]:
            index = [slice(None)] * full.ndim
            index[axis] = part["channels"]
            full[tuple(index)] = dequantize(raw_of(int(part["index"])), part["scale"], part["zero_point"])
        maps.append(full)
    return maps


def _tail_session(path: Path):
    """ONNX Runtime on the decode tail (one thread: it is the host's share, not the device's)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise runcore.RunnerError(
            "this model's decode is its ONNX tail, which needs onnxruntime beside the runner: "
            "pip install onnxruntime"
        ) from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    runcore.main(TflmRuntime, "tflm_run")
