"""INT8 QDQ ONNX in the form TensorRT's *explicit quantization* accepts, and a checker for that form.

TensorRT builds an explicitly quantized engine when the network carries QuantizeLinear/DequantizeLinear
pairs, and then it takes the precision from the model: no calibrator, no ``--int8`` on TensorRT 11 (strong
typing). Its rules differ from ONNX Runtime's CPU defaults (:func:`edgekit.quantize.ptq.quantize_int8`):

* INT8 only, **signed**: UINT8 Q/DQ are rejected, so activations are ``QInt8``.
* **Symmetric**: every zero point is exactly 0 (TensorRT has no zero-point arithmetic).
* Weights per channel on the **output-channel axis** (axis 0 for Conv, per layout for Gemm/MatMul),
  activations per tensor.
* QDQ form only: ``QLinearConv``/``ConvInteger``/``MatMulInteger`` (QOperator form) are not parsed.
* Opset >= 13 (per-axis Q/DQ).

edgekit writes weights as float initializer -> QuantizeLinear -> DequantizeLinear (what QAT exports and
every TensorRT 8.x parser takes; pre-quantized INT8 weights followed by a DequantizeLinear are also
accepted by :func:`check_trt_qdq`), and keeps biases in float (an INT32 bias DequantizeLinear is not a
TensorRT Q/DQ: TensorRT folds the float bias into the INT8 kernel itself).

Relu/Clip are *not* quantized here, unlike the ORT form: with signed symmetric INT8 a ReLU cannot be folded
into the zero point, so quantizing it would only put a Q/DQ between a conv and the ReLU TensorRT fuses into
it. The next conv quantizes the ReLU's output, which is where TensorRT wants the pair.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BuildError, ModelError
from edgekit.quantize.calibrators import (
    Calibration,
)
from edgekit.quantize.form import QdqForm
from edgekit.quantize.ptq import QuantResult, calibrate_and_write, run_quantize_static

__all__ = ["TRT_OP_TYPES", "check_trt_qdq", "quantize_trt_qdq", "tensorrt_qdq_form", "trt_form_note"]

#: Ops whose inputs get Q/DQ: the weighted ops, plus MaxPool/Resize, which are exact in INT8 and let
#: INT8 tensors flow through the neck. Relu/Clip are left out (see the module docstring).
TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "Resize")
MIN_OPSET = 13
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# QOperator-form and dynamic-quantization ops: TensorRT's ONNX parser does not take them.
_QOPERATOR_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
_INT8, _UINT8 = 3, 2  # onnx.TensorProto.INT8 / UINT8
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 10: "float16", 16: "bfloat16"}


def trt_form_note() -> str:
    """One line the report shows next to a TensorRT explicit-quantization artifact."""
    return (
        "TensorRT explicit quantization: signed INT8 (QInt8), symmetric (zero points 0), "
        "per-channel weights on the output-channel axis, per-tensor activations, float bias, QDQ opset >= 13"
    )


def tensorrt_qdq_form(source: str = "TensorRT on the device's GPU") -> QdqForm:
    """TensorRT's explicit-quantization layout (the GPU's INT8 kernels need no weight-range cut)."""
    reason = "8-bit weights, TensorRT explicit quantization (signed INT8, symmetric, per-channel weights)"
    single = functools.partial(run_quantize_static, **TRT_WRITER_OPTIONS)
    return QdqForm(
        False, reason, "tensorrt", source, layout="tensorrt", label="TensorRT-form QDQ",
        writer=quantize_trt_qdq, single_layer_writer=single,
    )  # fmt: skip


def quantize_trt_qdq(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calibration: Calibration,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    keep_float: str | list[str] | None = "auto",
    reduce_range: bool = False,
    input_name: str | None = None,
    progress: bool = True,
) -> QuantResult:
    """Quantize an FP32 ONNX model to the INT8 QDQ form TensorRT's explicit quantization accepts.

    Ranges come from the same calibrators as :func:`~edgekit.quantize.ptq.quantize_int8` (so entropy and
    percentile really differ from minmax); ``keep_float`` keeps the same detector head parts in float.
    The written model is checked with :func:`check_trt_qdq` before it is returned.

    Args:
        fp32_onnx: The FP32 model.
        out_path: Where to write the QDQ model (written atomically).
        calibration: Preprocessed float32 arrays (CHW or NCHW), or a callable returning a fresh iterable.
        method: ``minmax``, ``entropy`` or ``percentile``. The scales live in the model, so any method
            works (unlike a calibration cache, which must name a TensorRT calibrator).
        percentile: Percentile for ``percentile``.
        keep_float: ``"auto"`` (prediction convs + decode tail), node names, or None.
        reduce_range: 7-bit weights. TensorRT does not need it; it only matters when the same file is
            also run by ONNX Runtime on an x86 CPU without VNNI (see :mod:`edgekit.quantize.form`).
        input_name: Graph input to feed (default: the first).
        progress: Show a progress bar over the calibration images.

    Returns:
        A :class:`~edgekit.quantize.ptq.QuantResult` (``scales`` zero points are all 0).

    Raises:
        CalibrationError: The calibration set is empty.
        ConfigError: Unknown method, input name or keep_float node.
        ModelError: The FP32 model is missing or corrupt.
        BuildError: The written model breaks a TensorRT explicit-quantization rule (a bug or an ORT change).

    Example:
        >>> res = quantize_trt_qdq("m.onnx", "m.trt.onnx", arrays, method="entropy")  # doctest: +SKIP
        >>> check_trt_qdq(res.path)  # doctest: +SKIP
        []
    """

    def write(prepared: Path, quantized: Path, cache: Path, excluded: list[str]) -> None:
        _quantize_static_trt(prepared, quantized, cache, method, excluded, reduce_range)
        _require_trt_form(quantized)

    return calibrate_and_write(
        fp32_onnx, out_path, calibration, write, method=method, percentile=percentile, per_channel=True,
        reduce_range=reduce_range, keep_float=keep_float, input_name=input_name, progress=progress,
    )  # fmt: skip


#: ``quantize_static`` settings of the TensorRT form: signed symmetric activations, float weights + Q/DQ
#: pairs (the form every TensorRT 8.x parser takes), float bias (TensorRT adds it itself).
TRT_WRITER_OPTIONS: dict = {
    "signed_activations": True,
    "op_types": TRT_OP_TYPES,
    "extra_options": {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "AddQDQPairToWeight": True,
        "QuantizeBias": False,
    },
}


def _quantize_static_trt(
    prepared: Path, out: Path, cache: Path, method: str, excluded: list[str], reduce_range: bool
) -> None:
    """``quantize_static`` in the TensorRT form (:data:`TRT_WRITER_OPTIONS`), per-channel weights."""
    run_quantize_static(
        prepared, out, cache, method, True, excluded, reduce_range=reduce_range, **TRT_WRITER_OPTIONS
    )


def _require_trt_form(path: Path) -> None:
    problems = check_trt_qdq(path)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BuildError(
            f"the TensorRT-form QDQ model breaks explicit-quantization rules: {shown}",
            "this is a bug in edgekit or a changed onnxruntime quantizer; please report it with the model",
        )


# --- checker --------------------------------------------------------------------------------------------


def check_trt_qdq(model_or_path: Any) -> list[str]:
    """List the ways a QDQ ONNX model breaks TensorRT's explicit-quantization rules.

    Rules (TensorRT developer guide, "Explicit Quantization"; ONNX QuantizeLinear/DequantizeLinear spec):
    opset >= 13; no QOperator ops (``QLinear*``, ``ConvInteger``, ``MatMulInteger``,
    ``DynamicQuantizeLinear``); every Q/DQ in the default domain with constant, positive, finite float32
    scales and INT8 zero points that are all 0 (a missing zero point makes ONNX's QuantizeLinear UINT8);
    activations per tensor; weights per channel on the output-channel axis with one scale per output
    channel; a QuantizeLinear feeds only DequantizeLinears, and a DequantizeLinear reads a QuantizeLinear
    or a constant INT8 weight.

    Args:
        model_or_path: An ``onnx.ModelProto`` or a path to one.

    Returns:
        One readable sentence per problem, naming the node; empty when TensorRT can take the model.

    Raises:
        ModelError: The path does not hold a readable ONNX model.

    Example:
        >>> check_trt_qdq("model.int8.onnx")  # doctest: +SKIP
        ["QuantizeLinear 'x_QuantizeLinear': zero point is uint8; TensorRT needs int8 (signed INT8)", ...]
    """
    model = _load(model_or_path)
    graph = _Graph(model)
    problems = _opset_problems(model) + _operator_problems(model)
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS:
            problems += _qdq_node_problems(node, graph)
    return problems


def _load(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    try:
        return onnx.load(str(model_or_path), load_external_data=False)
    except Exception as exc:  # onnx raises OSError, DecodeError or its own errors for a bad file
        raise ModelError(f"cannot read ONNX model {model_or_path}: {exc}", "pass a QDQ .onnx file") from exc


class _Graph:
    """Lookups the rules need: constants by name, producer and consumers of each tensor."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        self.dtypes: dict[str, int] = {init.name: init.data_type for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
                self.constants[node.output[0]] = numpy_helper.to_array(tensor)
                self.dtypes[node.output[0]] = tensor.data_type
        self.producer = {out: node for node in model.graph.node for out in node.output if out}
        self.consumers: dict[str, list[Any]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in model.graph.output}


def _describe(node: Any) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def _opset_problems(model: Any) -> list[str]:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        return [f"opset {opset} is below {MIN_OPSET}: TensorRT needs opset >= 13 for per-channel Q/DQ"]
    return []


def _operator_problems(model: Any) -> list[str]:
    problems = []
    for node in model.graph.node:
        if node.op_type.startswith("QLinear") or node.op_type in _QOPERATOR_OPS:
            problems.append(
                f"{_describe(node)} is a QOperator-form op; TensorRT takes only "
                "QuantizeLinear/DequantizeLinear (write QuantFormat.QDQ)"
            )
        elif node.op_type in _QDQ_OPS and node.domain not in ("", "ai.onnx"):
            problems.append(
                f"{_describe(node)} is in domain {node.domain!r}; TensorRT parses only the ONNX domain"
            )
    return problems


def _qdq_node_problems(node: Any, graph: _Graph) -> list[str]:
    problems = _scale_problems(node, graph) + _zero_point_problems(node, graph)
    problems += _pairing_problems(node, graph)
    if node.op_type == "DequantizeLinear":
        problems += _granularity_problems(node, graph)
    return problems


def _scale_problems(node: Any, graph: _Graph) -> list[str]:
    name = node.input[1] if len(node.input) > 1 else ""
    if name not in graph.constants:
        return [f"{_describe(node)}: scale {name!r} is not a constant; TensorRT needs constant scales"]
    scale = graph.constants[name]
    problems = []
    if scale.dtype != np.float32:
        problems.append(f"{_describe(node)}: scale is {scale.dtype}; TensorRT needs float32 scales")
    values = scale.astype(np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        bad = next((float(v) for v in values if not (math.isfinite(v) and v > 0)), None)
        problems.append(f"{_describe(node)}: scale {bad!r} is not positive and finite (failed calibration?)")
    return problems


def _zero_point_problems(node: Any, graph: _Graph) -> list[str]:
    dtype, zero = _zero_point(node, graph)
    if dtype != _INT8:
        kind = _DTYPE_NAMES.get(dtype, f"type {dtype}")
        why = "asymmetric unsigned INT8" if dtype == _UINT8 else "not a TensorRT INT8 Q/DQ"
        return [f"{_describe(node)}: zero point is {kind} ({why}); TensorRT needs int8 (signed INT8)"]
    if zero is not None and np.any(zero != 0):
        nonzero = int(np.flatnonzero(zero.reshape(-1))[0])
        value = int(zero.reshape(-1)[nonzero])
        return [f"{_describe(node)}: zero point {value} is not 0; TensorRT needs symmetric quantization"]
    return []


def _zero_point(node: Any, graph: _Graph) -> tuple[int | None, np.ndarray | None]:
    """(ONNX element type, values) of a Q/DQ's zero point, following the spec when it is absent."""
    name = node.input[2] if len(node.input) > 2 else ""
    if name:
        return graph.dtypes.get(name), graph.constants.get(name)
    if node.op_type == "QuantizeLinear":
        return _UINT8, None  # the spec: without y_zero_point, QuantizeLinear outputs uint8
    source = node.input[0]
    if source in graph.dtypes:
        return graph.dtypes[source], None
    producer = graph.producer.get(source)
    if producer is not None and producer.op_type == "QuantizeLinear":
        return _zero_point(producer, graph)[0], None
    return None, None


def _pairing_problems(node: Any, graph: _Graph) -> list[str]:
    if node.op_type == "QuantizeLinear":
        readers = graph.consumers.get(node.output[0], [])
        strays = sorted({r.op_type for r in readers if r.op_type != "DequantizeLinear"})
        if node.output[0] in graph.graph_outputs:
            strays.append("a graph output")
        if strays or not readers:
            what = ", ".join(strays) or "nothing"
            return [f"{_describe(node)} feeds {what}; a QuantizeLinear must feed DequantizeLinear(s) only"]
        return []
    source = node.input[0]
    producer = graph.producer.get(source)
    if producer is not None and producer.op_type == "QuantizeLinear":
        return []
    if source in graph.constants:
        return []  # pre-quantized constant (INT8 weights; another type is reported by its zero point)
    return [
        f"{_describe(node)} reads {source!r}, which is neither a QuantizeLinear output nor a constant "
        "INT8 weight; Q/DQ must come in pairs"
    ]


def _weight_source(node: Any, graph: _Graph) -> np.ndarray | None:
    """The weight array behind a DequantizeLinear (directly or through a QuantizeLinear), else None."""
    source = node.input[0]
    if source in graph.constants:
        return graph.constants[source]
    producer = graph.producer.get(source)
    if producer is not None and producer.op_type == "QuantizeLinear":
        return graph.constants.get(producer.input[0])
    return None


def _granularity_problems(node: Any, graph: _Graph) -> list[str]:
    scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return []
    weight = _weight_source(node, graph)
    consumers = graph.consumers.get(node.output[0], [])
    weighted = [
        c for c in consumers if c.op_type in _OUT_AXIS and len(c.input) > 1 and c.input[1] == node.output[0]
    ]
    if weight is not None and not weighted:
        return []  # a constant that is not a weight input (an INT32 bias): its zero point type is reported
    if weight is None:
        if scale.size > 1:
            return [f"{_describe(node)}: activation quantized per channel; TensorRT needs per-tensor"]
        return []
    return [p for user in weighted for p in _weight_axis_problems(node, user, weight, scale)]


def _conv_axis(_: Any, weight: np.ndarray) -> tuple[int, int]:
    return 0, weight.shape[0]


def _conv_transpose_axis(user: Any, weight: np.ndarray) -> tuple[int, int]:
    return 1, weight.shape[1]


def _gemm_axis(user: Any, weight: np.ndarray) -> tuple[int, int]:
    trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
    return (0, weight.shape[0]) if trans_b else (1, weight.shape[1])


def _matmul_axis(_: Any, weight: np.ndarray) -> tuple[int, int]:
    return weight.ndim - 1, weight.shape[-1]


# Output-channel axis (and channel count) of each weighted op's weight, from the op and its layout.
_OUT_AXIS: dict[str, Callable[[Any, np.ndarray], tuple[int, int]]] = {
    "Conv": _conv_axis,
    "ConvTranspose": _conv_transpose_axis,
    "Gemm": _gemm_axis,
    "MatMul": _matmul_axis,
}


def _weight_axis_problems(node: Any, user: Any, weight: np.ndarray, scale: np.ndarray) -> list[str]:
    want_axis, channels = _OUT_AXIS[user.op_type](user, weight)
    where = f"{_describe(node)} (weight of {_describe(user)})"
    if scale.size != channels:
        granularity = "per-tensor" if scale.size == 1 else f"{scale.size} scales"
        return [
            f"{where}: {granularity}, expected per-channel with {channels} scales (one per output channel)"
        ]
    if channels == 1:
        return []
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    axis = axis + weight.ndim if axis < 0 else axis
    if axis != want_axis:
        return [f"{where}: per-channel axis {axis}, expected {want_axis} (the output-channel axis)"]
    return []
