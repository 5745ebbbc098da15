"""What a ``.tflite`` flatbuffer holds, read from the file itself, and whether TFLite Micro can take it.

Ops, I/O tensors, float tensors, Q/DQ ops and conv bias scales (:func:`inspect_flatbuffer`), and the
checks that make a model full-integer (:func:`problems`).

Used by ``litert_pt2e.py`` in the converter environment (numpy and the TFLite schema module only).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def schema():
    """The TFLite flatbuffer schema module (ai-edge-litert's, else tflite-micro's)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    return schema_py_generated


def enum_names(cls) -> dict[int, str]:
    """Reverse map of a flatbuffer enum class."""
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def decode(raw) -> str:
    """Flatbuffer strings come back as bytes."""
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def tensor_info(t, type_names: dict[int, str]) -> dict:
    """Shape, dtype and quantization of one tensor."""
    q = t.quantization
    scales = [] if q is None or q.scale is None else [float(s) for s in q.scale]
    zps = [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    return {
        "name": decode(t.name),
        "shape": [int(d) for d in (t.shape if t.shape is not None else [])],
        "dtype": type_names[t.type],
        "scale": scales[0] if len(scales) == 1 else scales,
        "zero_point": zps[0] if len(zps) == 1 else zps,
    }


def op_name(code, op_names: dict[int, str]) -> str:
    """Builtin name of an operator code (``FLEX:<op>`` or ``CUSTOM:<name>`` for custom ops)."""
    builtin = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
    if builtin == "CUSTOM":
        custom = decode(code.customCode)
        return f"FLEX:{custom[4:]}" if custom.startswith("Flex") else f"CUSTOM:{custom}"
    return builtin


def is_constant(model, tensor) -> bool:
    """Whether a tensor's values are stored in the flatbuffer (weights, grids) rather than computed."""
    return tensor.buffer > 0 and model.buffers[tensor.buffer].data is not None


def inspect_flatbuffer(data: bytes) -> dict:
    """Op counts, I/O details, float tensors and Q/DQ ops, read from the flatbuffer itself."""
    sch = schema()
    model = sch.ModelT.InitFromPackedBuf(data, 0)
    type_names, op_names = enum_names(sch.TensorType), enum_names(sch.BuiltinOperator)
    sub = model.subgraphs[0]
    names = [op_name(c, op_names) for c in model.operatorCodes]
    ops = [names[op.opcodeIndex] for op in sub.operators]
    io = set(sub.inputs) | set(sub.outputs)
    info = [tensor_info(t, type_names) for t in sub.tensors]
    qdq = [
        {"op": name, "in": info[op.inputs[0]]["dtype"], "out": info[op.outputs[0]]["dtype"]}
        for name, op in zip(ops, sub.operators, strict=True)
        if name in ("QUANTIZE", "DEQUANTIZE")
    ]
    return {
        "subgraphs": len(model.subgraphs),
        "ops": dict(sorted(Counter(ops).items())),
        "op_sequence": ops,
        "inputs": [info[i] for i in sub.inputs],
        "outputs": [info[i] for i in sub.outputs],
        "float_tensors": [
            {**info[i], "const": is_constant(model, sub.tensors[i])}
            for i in range(len(info))
            if i not in io and info[i]["dtype"] in FLOAT_TYPES
        ],
        "quantize_dequantize": qdq,
        "flex_or_custom_ops": sorted({o for o in ops if o.startswith(("FLEX:", "CUSTOM:"))}),
        "bias_scale_mismatches": bias_scale_mismatches(ops, sub.operators, info),
    }


def bias_scale_mismatches(ops: list[str], operators, info: list[dict]) -> list[dict]:
    """Convs whose int32 bias was quantized for another input scale than the input tensor has.

    An int8 conv's kernel rescales with its input tensor's scale and adds the bias as stored, so the
    bias must have been quantized with ``input_scale x weight_scale``. When the lowering gives an op
    its input's scale (TFLite's same-scale ops) after PT2E observed its own, the next conv's bias is
    off by that ratio: a model that converts, runs and is silently wrong.
    """
    bad = []
    for i, (name, op) in enumerate(zip(ops, operators, strict=True)):
        if (
            name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
            or len(op.inputs) < 3
            or op.inputs[2] < 0
        ):
            continue
        sx, sw, sb = (np.atleast_1d(np.asarray(info[t]["scale"], dtype=np.float64)) for t in op.inputs[:3])
        if sx.size != 1 or sb.size != sw.size or not sw.size or not (sw > 0).all():
            continue
        implied = float(np.mean(sb / sw))
        if abs(implied / float(sx[0]) - 1) > 0.01:
            bad.append({"op_index": i, "op": name, "input_scale": float(sx[0]), "bias_implies": implied})
    return bad


def problems(graph: dict) -> list[str]:
    """Why the model is not a full-integer TFLM model (empty when it is)."""
    io = graph["inputs"] + graph["outputs"]
    found = [f"I/O tensor {t['name']!r} is {t['dtype']}" for t in io if t["dtype"] != "INT8"]
    if graph["float_tensors"]:
        found.append(f"{len(graph['float_tensors'])} float tensors inside the graph")
    float_qdq = [q for q in graph["quantize_dequantize"] if q["in"] in FLOAT_TYPES or q["out"] in FLOAT_TYPES]
    if float_qdq:
        found.append(f"{len(float_qdq)} QUANTIZE/DEQUANTIZE ops to or from float")
    if graph["flex_or_custom_ops"]:
        found.append(f"Flex/custom ops {graph['flex_or_custom_ops']}")
    if graph["subgraphs"] != 1:
        found.append(f"{graph['subgraphs']} subgraphs")
    if graph.get("bias_scale_mismatches"):
        found.append(
            f"{len(graph['bias_scale_mismatches'])} convs whose bias was quantized for another input scale "
            "(a lowering mismatch; the outputs would be silently wrong)"
        )
    return found
