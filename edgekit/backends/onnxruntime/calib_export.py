"""ONNX Runtime's calibration files: the preprocessed inputs as one ``.npy`` and a reader description."""

from __future__ import annotations

import numpy as np

from edgekit.calib.exporters import ExportContext
from edgekit.core.files import atomic_write_json

FORMAT = "onnxruntime"


def write(ctx: ExportContext, input_name: str = "images") -> dict:
    """``inputs.npy`` (N, C, H, W) float32 and ``reader.json`` (what a ``CalibrationDataReader`` feeds)."""
    arr = ctx.stacked()
    np.save(ctx.tmp / "inputs.npy", arr)
    reader = {
        "input_name": input_name,
        "count": int(arr.shape[0]),
        "shape": list(arr.shape),
        "layout": ctx.cs.spec.layout,
        "spec": ctx.cs.spec.model_dump(),
        "set": ctx.cs.ref(),
        "file": "inputs.npy",
    }
    atomic_write_json(ctx.tmp / "reader.json", reader)
    return {"files": ["inputs.npy", "reader.json"]}
