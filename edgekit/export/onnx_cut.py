"""A detector's float ONNX cut at its prediction convs: the part before as a ``torch.export`` program.

Split from :mod:`edgekit.export.onnx_torch` (the graph interpreter it uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgekit.core.errors import ModelError
from edgekit.export.onnx_torch import OnnxModule

TAIL_SUFFIX = ".tail.onnx"
"""Beside a raw program made from an ONNX: the ONNX's own decode, from the raw maps to its output."""


def raw_program_from_onnx(onnx_path: Any, path: Any, head: str, atol: float = 1e-3) -> Any:
    """Cut a float ONNX detector at its prediction convs: the part before as a ``torch.export`` program.

    The program returns the raw maps (what a full-integer device computes); the graph after them, the
    detector's own decode, is written beside it as ``<stem>.tail.onnx`` and named in the decode spec
    (``kind: onnx-tail``), so a runner turns the device's maps into the model's own output with ONNX
    Runtime and nothing about its anchors or DFL has to be guessed. The program is checked against ONNX
    Runtime on the cut graph (max abs error ``atol``) before it is written.

    Returns:
        The program's path.

    Raises:
        ModelError: No prediction convs, an op the importer lacks, or a program that disagrees with ORT.
        BuildError: ``torch.export`` rejected the imported graph.
    """
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    from edgekit.core.errors import BuildError
    from edgekit.core.files import atomic_write_bytes, atomic_write_json
    from edgekit.export.onnx import RAW_DECODE_SUFFIX, load_checked
    from edgekit.quantize.graph import ensure_node_names, prediction_convs

    path = Path(path)
    proto = ensure_node_names(load_checked(onnx_path))
    convs = set(prediction_convs(proto))
    raw = [n.output[0] for n in proto.graph.node if n.name in convs]
    if not raw:
        raise ModelError(f"{onnx_path} has no prediction convs to cut at", "give a YOLO-style detector")
    init = {t.name for t in proto.graph.initializer}
    image = next(i.name for i in proto.graph.input if i.name not in init)
    outputs = [o.name for o in proto.graph.output]
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(proto))
    cut = extractor.extract_model([image], raw)
    tail = extractor.extract_model(raw, outputs)
    shape = [
        d.dim_value for d in next(i for i in cut.graph.input if i.name == image).type.tensor_type.shape.dim
    ]
    module = OnnxModule(cut).eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {image: x})
    with torch.no_grad():
        got = [t.numpy() for t in module(torch.from_numpy(x))]
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    if err > atol:
        raise ModelError(
            f"the ONNX importer disagrees with ONNX Runtime on {onnx_path} "
            f"(max abs error {err:.2e} > {atol})",
            "report this model's ops; meanwhile give the torch model instead",
        )
    try:
        program = torch.export.export(module, (torch.zeros(shape),))
        tmp = path.with_name(path.stem + ".tmp.pt2")
        torch.export.save(program, str(tmp))
        tmp.replace(path)
    except Exception as exc:  # torch.export raises many unrelated types
        raise BuildError(f"torch.export of the imported ONNX failed: {exc}", "give the torch model") from exc
    tail_path = path.with_name(path.stem + TAIL_SUFFIX)
    atomic_write_bytes(tail_path, tail.SerializeToString())
    size = shape[2]
    spec = {
        "kind": "onnx-tail",
        "head": head,
        "tail": tail_path.name,
        "maps": [
            {"name": name, "stride": size // int(r.shape[2]), "channels": int(r.shape[1])}
            for name, r in zip(raw, ref, strict=True)
        ],
        "importer_max_abs_error": err,
    }
    atomic_write_json(path.with_name(path.stem + RAW_DECODE_SUFFIX), spec)
    return path
