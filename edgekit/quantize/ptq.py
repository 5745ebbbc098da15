"""INT8 post-training quantization of an FP32 ONNX detector with ONNX Runtime (QDQ format).

Layout: QDQ, per-channel symmetric INT8 weights, per-tensor asymmetric UINT8 activations. Ranges
come from :mod:`edgekit.quantize.calibrators` (which makes Entropy and Percentile really differ
from MinMax; see there), handed to ``quantize_static`` as ORT's calibration cache.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import ConfigError
from edgekit.core.files import stable_hash
from edgekit.quantize import graph as qgraph
from edgekit.quantize.calibrators import (
    METHODS,
    OP_TYPES_TO_QUANTIZE,
    Calibration,
    calibration_cache,
    check_method,
    ort_method,
    prepare_model,
    tensor_ranges,
)

__all__ = ["METHODS", "QuantResult", "compare_calibrators", "quantize_int8", "tensor_ranges"]


@dataclass
class QuantResult:
    """What :func:`quantize_int8` produced.

    Attributes:
        path: The QDQ ONNX file.
        method: Calibration method (minmax, entropy, percentile).
        percentile: Percentile used (only meaningful for ``percentile``).
        per_channel: Whether weights have per-channel scales.
        reduce_range: Whether weights use 7 of their 8 bits (``[-64, 63]``; see :mod:`edgekit.quantize.form`).
        excluded_nodes: Nodes kept in float.
        quantized_nodes: Number of nodes that compute on dequantized INT8 weights/activations.
        scales: Activation tensor name -> (scale, zero_point), read back from the QDQ model.
        scales_sha256: Stable hash of ``scales`` (differs when calibrators really differ).
        calibration_count: Calibration arrays seen.
        seconds: Wall time.
        size_bytes: Size of the QDQ file.
    """

    path: Path
    method: str
    percentile: float
    per_channel: bool
    reduce_range: bool
    excluded_nodes: list[str]
    quantized_nodes: int
    scales: dict[str, tuple[float, int]] = field(repr=False)
    scales_sha256: str
    calibration_count: int
    seconds: float
    size_bytes: int

    @property
    def weight_bits(self) -> int:
        """Bits of the weight grid: 7 with ``reduce_range``, else 8."""
        return 7 if self.reduce_range else 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for records (scales left out: they can be read from the file)."""
        data = asdict(self)
        data["path"] = str(self.path)
        data.pop("scales")
        return data


def read_activation_scales(qdq_model: Any) -> dict[str, tuple[float, int]]:
    """Read tensor -> (scale, zero_point) of every per-tensor QuantizeLinear in a QDQ model."""
    from onnx import numpy_helper

    inits = {init.name: numpy_helper.to_array(init) for init in qdq_model.graph.initializer}
    scales: dict[str, tuple[float, int]] = {}
    for node in qdq_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = inits[node.input[1]]
            zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.zeros(1)
            if scale.size == 1:
                scales[node.input[0]] = (float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]))
    return dict(sorted(scales.items()))


def count_quantized_nodes(qdq_model: Any, op_types: tuple[str, ...] = OP_TYPES_TO_QUANTIZE) -> int:
    """Count nodes of ``op_types`` that really run in INT8 in a QDQ model.

    A weighted op (Conv, Gemm, MatMul, ...) counts when its second input comes from a
    DequantizeLinear; any other op when its first input does and its output feeds a QuantizeLinear.
    (A float node right after an INT8 one also reads a DequantizeLinear output, so that alone is
    not enough.)
    """
    nodes = qdq_model.graph.node
    dq_outputs = {node.output[0] for node in nodes if node.op_type == "DequantizeLinear"}
    q_inputs = {node.input[0] for node in nodes if node.op_type == "QuantizeLinear"}

    def runs_int8(node: Any) -> bool:
        if node.op_type in qgraph.COMPUTE_OPS:
            return len(node.input) > 1 and node.input[1] in dq_outputs
        return node.input[0] in dq_outputs and node.output[0] in q_inputs

    return sum(1 for node in nodes if node.op_type in op_types and runs_int8(node))


def resolve_keep_float(model: Any, keep_float: str | list[str] | None) -> list[str]:
    """Expand ``keep_float`` ("auto", a list of node names, or None) into node names to exclude."""
    if keep_float is None:
        return []
    if keep_float == "auto":
        return qgraph.keep_float_auto(model)
    if isinstance(keep_float, str):
        raise ConfigError(f"keep_float={keep_float!r} is not understood", 'use "auto", a name list or None')
    missing = qgraph.unknown_nodes(model, list(keep_float))
    if missing:
        raise ConfigError(
            f"keep_float names nodes not in the model: {', '.join(missing)}",
            "list node names with edgekit.quantize.graph.quantizable_nodes(onnx.load(path))",
        )
    return list(keep_float)


def quantize_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calibration: Calibration,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    per_channel: bool = True,
    reduce_range: bool = False,
    keep_float: str | list[str] | None = "auto",
    input_name: str | None = None,
    progress: bool = True,
    nodes_to_quantize: list[str] | None = None,
) -> QuantResult:
    """Quantize an FP32 ONNX model to INT8 QDQ with ONNX Runtime static quantization.

    Args:
        fp32_onnx: The FP32 model.
        out_path: Where to write the QDQ model (written atomically).
        calibration: Preprocessed float32 arrays (CHW or NCHW), or a callable returning a fresh iterable.
        method: ``minmax``, ``entropy`` or ``percentile``.
        percentile: Percentile for ``percentile`` (e.g. 99.99).
        per_channel: Per-output-channel weight scales.
        reduce_range: 7-bit weights, for CPUs whose INT8 kernels saturate at full range (x86 without
            VNNI); :func:`edgekit.quantize.form.ort_qdq_form` decides it from the device's CPU.
        keep_float: ``"auto"`` keeps the prediction conv(s) and the decode tail in float; a list names
            nodes; ``None`` quantizes everything quantizable.
        input_name: Graph input to feed (default: the first).
        progress: Show a progress bar over the calibration images.
        nodes_to_quantize: Restrict quantization to these nodes (sensitivity analysis uses it).

    Returns:
        A :class:`QuantResult`.

    Raises:
        CalibrationError: The calibration set is empty.
        ConfigError: Unknown method, input name or keep_float node.
        ModelError: The FP32 model is missing or corrupt.

    Example:
        >>> res = quantize_int8("model.onnx", "model.int8.onnx", arrays, method="entropy")  # doctest: +SKIP
        >>> res.quantized_nodes, res.scales_sha256[:8]  # doctest: +SKIP
    """

    def write(prepared: Path, quantized: Path, cache: Path, excluded: list[str]) -> None:
        run_quantize_static(
            prepared, quantized, cache, method, per_channel, excluded, nodes_to_quantize, reduce_range
        )

    return calibrate_and_write(
        fp32_onnx, out_path, calibration, write, method=method, percentile=percentile,
        per_channel=per_channel, reduce_range=reduce_range, keep_float=keep_float,
        input_name=input_name, progress=progress,
    )  # fmt: skip


def calibrate_and_write(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calibration: Calibration,
    write: Callable[[Path, Path, Path, list[str]], None],
    *,
    method: str,
    percentile: float,
    per_channel: bool,
    reduce_range: bool,
    keep_float: str | list[str] | None,
    input_name: str | None,
    progress: bool,
) -> QuantResult:
    """The steps every QDQ layout shares: prepare, calibrate once, resolve float nodes, write, summarize.

    ``write(prepared, quantized, cache, excluded)`` writes the layout's QDQ model (ONNX Runtime's here,
    TensorRT's in :mod:`edgekit.backends.tensorrt.form`); the result replaces ``out_path`` only when it
    returns.
    """
    check_method(method)
    start = time.perf_counter()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        workdir = Path(tmp)
        prepared = prepare_model(Path(fp32_onnx), workdir)
        cache, count = calibration_cache(
            prepared, calibration, method, percentile, input_name, progress, workdir
        )
        excluded = _excluded(prepared, keep_float)
        quantized = workdir / "quantized.onnx"
        write(prepared, quantized, cache, excluded)
        quantized.replace(out_path)
    seconds = time.perf_counter() - start
    return summarize(out_path, method, percentile, per_channel, excluded, count, seconds, reduce_range)


def _excluded(prepared: Path, keep_float: str | list[str] | None) -> list[str]:
    import onnx

    return resolve_keep_float(onnx.load(str(prepared)), keep_float)


def run_quantize_static(
    prepared: Path,
    out: Path,
    cache: Path,
    method: str,
    per_channel: bool,
    excluded: list[str],
    nodes_to_quantize: list[str] | None = None,
    reduce_range: bool = False,
    *,
    signed_activations: bool = False,
    op_types: tuple[str, ...] = OP_TYPES_TO_QUANTIZE,
    extra_options: dict[str, Any] | None = None,
) -> None:
    """Call ``quantize_static`` with ranges from an ORT calibration cache (no calibration pass).

    The default is ONNX Runtime's CPU layout (unsigned asymmetric activations); ``signed_activations``
    with ``extra_options`` gives other runtimes' layouts (TensorRT: :mod:`edgekit.backends.tensorrt.form`).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    options = {"ActivationSymmetric": False, "WeightSymmetric": True, **(extra_options or {})}
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(out),
            calibration_data_reader=None,
            calibration_cache_path=str(cache),
            calibrate_method=ort_method(method),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(excluded),
            nodes_to_quantize=list(nodes_to_quantize or []),
            extra_options=options,
        )


def summarize(
    path: Path,
    method: str,
    percentile: float,
    per_channel: bool,
    excluded: list[str],
    count: int,
    seconds: float,
    reduce_range: bool = False,
) -> QuantResult:
    """Read a written QDQ model back into a :class:`QuantResult`."""
    import onnx

    qdq = onnx.load(str(path))
    scales = read_activation_scales(qdq)
    return QuantResult(
        path=path,
        method=method,
        percentile=percentile,
        per_channel=per_channel,
        reduce_range=reduce_range,
        excluded_nodes=list(excluded),
        quantized_nodes=count_quantized_nodes(qdq),
        scales=scales,
        scales_sha256=stable_hash({k: [v[0].hex(), v[1]] for k, v in scales.items()}, length=64),
        calibration_count=count,
        seconds=round(seconds, 3),
        size_bytes=path.stat().st_size,
    )


def compare_calibrators(results: list[QuantResult]) -> list[str]:
    """Warn when two calibration methods produced identical activation scales.

    Args:
        results: Results of the same model quantized with different methods.

    Returns:
        One warning per degenerate pair, e.g. "method 'entropy' silently degenerated to 'minmax' ...".
    """
    warnings: list[str] = []
    for i, first in enumerate(results):
        for later in results[i + 1 :]:
            if later.method != first.method and later.scales_sha256 == first.scales_sha256:
                warnings.append(
                    f"method {later.method!r} silently degenerated to {first.method!r}: identical activation "
                    f"scales (sha256 {first.scales_sha256[:12]}); its calibrator settings had no effect"
                )
    return warnings
