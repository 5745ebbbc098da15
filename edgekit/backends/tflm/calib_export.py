"""TFLite's calibration files: a representative dataset for the TFLite converter, and onnx2tf's ``-cind``."""

from __future__ import annotations

import numpy as np

from edgekit.calib.exporters import ExportContext, canvases
from edgekit.core.files import atomic_write_text

FORMAT = "tflite"


def write(ctx: ExportContext) -> dict:
    """``representative.npz`` + ``.py`` (the converter's dataset) and onnx2tf's ``-cind`` array."""
    arr = ctx.stacked()
    nhwc = arr.transpose(0, 2, 3, 1) if ctx.cs.spec.layout == "NCHW" else arr
    np.savez(ctx.tmp / "representative.npz", inputs=np.ascontiguousarray(nhwc, dtype=np.float32))
    ref = ctx.cs.ref()
    atomic_write_text(ctx.tmp / "representative.py", _REPRESENTATIVE_PY.format(**ref))
    # onnx2tf -cind wants raw 0..1 NHWC pixels plus mean/std of shape [1,1,1,3] and normalises itself.
    raw = np.stack([c.astype(np.float32) / 255.0 for c in canvases(ctx.cs, ctx.limit)])
    if ctx.cs.spec.channel_order == "BGR":
        raw = raw[..., ::-1]
    np.save(ctx.tmp / "cind_nhwc.npy", np.ascontiguousarray(raw, dtype=np.float32))
    cind = {"file": "cind_nhwc.npy", "mean": [[[list(ctx.cs.spec.mean)]]], "std": [[[list(ctx.cs.spec.std)]]]}
    return {"files": ["representative.npz", "representative.py", "cind_nhwc.npy"], "onnx2tf_cind": cind}


_REPRESENTATIVE_PY = '''"""Representative dataset for the TFLite converter.

Calibration set {name} v{version}, sha256 {sha256}.
Written by edgekit; needs only numpy. Samples are preprocessed float32 NHWC tensors.

    converter.representative_dataset = representative_dataset
"""

from pathlib import Path

import numpy as np

_NPZ = Path(__file__).with_name("representative.npz")


def representative_dataset():
    """Yield ``[array]`` with one (1, H, W, C) float32 sample per calibration image."""
    with np.load(_NPZ) as data:
        inputs = data["inputs"]
    for i in range(inputs.shape[0]):
        yield [inputs[i : i + 1]]
'''
