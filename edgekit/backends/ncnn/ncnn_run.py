"""Device-side ncnn runner: load + infer; everything else is the shared loop in ``runcore.py``.

Never imports edgekit: it is copied to the device with ``runcore.py`` and ``detcore.py`` beside it and
reads everything from the artifact's ``artifact.json``: the ``.param``/``.bin`` files, the blob names
(ncnn renames them ``in0``/``out0``) and the ``ncnn.Option`` flags. Every flag is set explicitly:
ncnn's defaults compute in fp16 where the CPU can, and an int8 model run without
``use_int8_inference`` outputs NaN. ncnn has no batch dim; the output gets it back, so it has the
ONNX model's shape (``[1, N, 5 + nc]``). Progress goes to stderr; stdout carries one JSON line.

Usage:
    python ncnn_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
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

import numpy as np  # noqa: E402
import runcore  # noqa: E402

#: ``ncnn.Option`` attributes the sidecar's ``runtime`` block sets (``threads`` is ``num_threads``).
FLAGS = (
    "use_vulkan_compute",
    "use_int8_inference",
    "use_fp16_storage",
    "use_fp16_packed",
    "use_fp16_arithmetic",
    "use_bf16_storage",
)


class NcnnRuntime:
    """An ``ncnn.Net`` loaded with the artifact's options and the requested threads."""

    name = "ncnn"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        import ncnn

        self.ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        flags = meta["runtime"]
        for flag in FLAGS:
            if flag not in flags:
                raise runcore.RunnerError(f"artifact.json runtime block has no {flag}")
            setattr(opt, flag, bool(flags[flag]))
        if threads:
            opt.num_threads = int(threads)
        model, weights = (Path(folder) / meta["files"][role] for role in ("model", "weights"))
        if self.net.load_param(str(model)) != 0 or self.net.load_model(str(weights)) != 0:
            raise runcore.RunnerError(f"ncnn {ncnn.__version__} cannot load {model.name}")
        self.input_blob = meta["ncnn"]["input_blob"]
        self.output_blob = meta["ncnn"]["output_blobs"][0]
        self.shape = [d if isinstance(d, int) and d > 0 else None for d in meta["output"]["shape"]]
        self.version = ncnn.__version__
        self.threads = opt.num_threads

    def infer(self, x):
        """Run one ``(1, C, H, W)`` input; return the first output with its batch dim."""
        extractor = self.net.create_extractor()
        extractor.input(self.input_blob, self.ncnn.Mat(x[0]).clone())
        ret, mat = extractor.extract(self.output_blob)
        if ret != 0:
            raise runcore.RunnerError(f"ncnn failed to compute {self.output_blob} (code {ret})")
        y = np.array(mat)[None]
        if not _shape_matches(y.shape, self.shape):
            raise runcore.RunnerError(f"ncnn gave shape {list(y.shape)}, artifact.json says {self.shape}")
        return y


def _shape_matches(shape: tuple[int, ...], expected: list[int | None]) -> bool:
    """``None`` in ``expected`` is a dynamic dim and matches anything."""
    return len(shape) == len(expected) and all(e in (None, d) for d, e in zip(shape, expected, strict=True))


if __name__ == "__main__":
    runcore.main(NcnnRuntime, "ncnn_run")
