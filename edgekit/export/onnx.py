"""PyTorch -> ONNX export, FP32 parity against ONNX Runtime, and a summary of an ONNX file.

The export uses the TorchScript-based exporter (``dynamo=False``): it folds Conv+BN in eval mode and
gives stable node names (``/head/pred/Conv``), which the quantizer relies on to keep layers in float.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BuildError, ModelError
from edgekit.core.files import atomic_write_bytes, atomic_write_json

REEXPORT_HINT = "re-export the model with `edgekit export` (or edgekit.export.export_onnx)"


def export_onnx(
    model: Any,
    input_shape: Sequence[int],
    path: str | Path,
    *,
    opset: int = 17,
    input_name: str = "images",
    output_name: str | Sequence[str] = "output",
) -> Path:
    """Export a torch module to ONNX, check the graph, and write it atomically.

    The model is exported in eval mode (its previous mode is restored afterwards) with a fixed
    input shape, which is what every edge runtime wants.

    Args:
        model: A ``torch.nn.Module``.
        input_shape: Full input shape including batch, e.g. ``(1, 3, 160, 160)``.
        path: Destination ``.onnx`` file.
        opset: ONNX opset version.
        input_name: Name of the graph input.
        output_name: Name of the (first) graph output, or the names of every output in order.

    Returns:
        The written path.

    Raises:
        BuildError: The exporter or the ONNX checker rejected the model.

    Example:
        >>> export_onnx(net, (1, 3, 160, 160), "out/model.onnx")  # doctest: +SKIP
        PosixPath('out/model.onnx')
    """
    import onnx
    import torch

    dummy = torch.zeros(tuple(int(d) for d in input_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter is deprecated in favour of dynamo, but dynamo's graphs are not yet
            # accepted by every edge converter; the warning is expected and says nothing to the user.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                buffer,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name] if isinstance(output_name, str) else list(output_name),
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # torch raises many unrelated types for unsupported ops
        raise BuildError(
            f"ONNX export failed: {exc}",
            "replace the unsupported op in the model, or try another opset",
        ) from exc
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"exported ONNX graph is invalid: {exc}", "report this model as a bug") from exc
    return atomic_write_bytes(path, buffer.getvalue())


def export_torchscript(model: Any, input_shape: Sequence[int], path: str | Path) -> Path:
    """Trace a torch module (eval mode, fixed input shape) to TorchScript and write it atomically.

    Some converters (pnnx for ncnn) convert a trace more faithfully than the ONNX of the same model.

    Raises:
        BuildError: The tracer rejected the model.
    """
    import torch

    dummy = torch.zeros(tuple(int(d) for d in input_shape), dtype=torch.float32)
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # torch 2.13 deprecates TorchScript; pnnx still reads it, and the warning tells the user nothing.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.jit.save(torch.jit.trace(model, (dummy,), check_trace=False), buffer)
    except Exception as exc:  # the tracer raises many unrelated types
        raise BuildError(
            f"TorchScript trace failed: {exc}", "make forward() traceable, or give an ONNX"
        ) from exc
    finally:
        model.train(was_training)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checked(path: str | Path) -> Any:
    """Load an ONNX file and validate it; every failure becomes a :class:`ModelError`.

    Args:
        path: The ``.onnx`` file.

    Returns:
        The ``onnx.ModelProto``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist", REEXPORT_HINT)
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"ONNX model {path} is corrupt or truncated: {str(exc).splitlines()[0]}", REEXPORT_HINT
        ) from exc
    if not proto.graph.node:
        raise ModelError(f"ONNX model {path} has an empty graph (truncated?)", REEXPORT_HINT)
    return proto


def _dims(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _dtype(value_info: Any) -> str:
    import onnx

    elem = value_info.type.tensor_type.elem_type
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))


def graph_inputs(proto: Any) -> list[Any]:
    """Return the graph inputs that are real inputs (not initializers, which old exporters list too)."""
    initializers = {init.name for init in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in initializers]


def onnx_info(path: str | Path) -> dict[str, Any]:
    """Summarise an ONNX file: input/output signature, op-type counts, parameter count, size.

    Args:
        path: The ``.onnx`` file.

    Returns:
        ``{"path", "inputs": [{"name","shape","dtype"}], "outputs": [...], "input_name", "input_shape",
        "input_dtype", "output_name", "output_shape", "ops": {op_type: count}, "nodes", "params",
        "opset", "size_bytes"}``.

    Raises:
        ModelError: The file is missing, corrupt or truncated.
    """
    from onnx import numpy_helper

    proto = load_checked(path)
    inputs = [{"name": vi.name, "shape": _dims(vi), "dtype": _dtype(vi)} for vi in graph_inputs(proto)]
    outputs = [{"name": vi.name, "shape": _dims(vi), "dtype": _dtype(vi)} for vi in proto.graph.output]
    params = sum(int(numpy_helper.to_array(init).size) for init in proto.graph.initializer)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "path": str(path),
        "inputs": inputs,
        "outputs": outputs,
        "input_name": inputs[0]["name"] if inputs else None,
        "input_shape": inputs[0]["shape"] if inputs else None,
        "input_dtype": inputs[0]["dtype"] if inputs else None,
        "output_name": outputs[0]["name"] if outputs else None,
        "output_shape": outputs[0]["shape"] if outputs else None,
        "ops": dict(sorted(Counter(node.op_type for node in proto.graph.node).items())),
        "nodes": len(proto.graph.node),
        "params": params,
        "opset": opset,
        "size_bytes": Path(path).stat().st_size,
    }


def ort_session(onnx_path: str | Path, threads: int = 0) -> Any:
    """Open a CPU ONNX Runtime session; a file ORT cannot load becomes a :class:`ModelError`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors (Fail, InvalidGraph, ...)
        raise ModelError(f"ONNX Runtime cannot load {onnx_path}: {exc}", REEXPORT_HINT) from exc


def _torch_outputs(model: Any, batch: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def check_parity(
    model: Any,
    onnx_path: str | Path,
    inputs: list[np.ndarray],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Run the torch model and the ONNX file on the same inputs and compare every output.

    An element passes when ``|onnx - torch| <= atol + rtol * |torch|`` (the ``np.allclose`` rule).

    Args:
        model: The ``torch.nn.Module`` that was exported (switched to eval mode, restored after).
        onnx_path: The exported file.
        inputs: Input batches (float32, the export shape).
        atol: Absolute tolerance.
        rtol: Relative tolerance.

    Returns:
        ``{"max_abs", "mean_abs", "max_rel", "worst_excess", "atol", "rtol", "inputs", "passed"}``.

    Raises:
        BuildError: Some element exceeds the tolerance (message names the max error and the tolerance).
        ModelError: The ONNX file cannot be loaded.
    """
    if not inputs:
        raise BuildError("check_parity needs at least one input array", "pass one or more input batches")
    session = ort_session(onnx_path)
    input_name = session.get_inputs()[0].name
    was_training = model.training
    model.eval()
    try:
        pairs = [
            (ref, got)
            for batch in inputs
            for ref, got in zip(
                _torch_outputs(model, batch),
                session.run(None, {input_name: np.asarray(batch, np.float32)}),
                strict=True,
            )
        ]
    finally:
        model.train(was_training)
    return _parity_stats(pairs, atol, rtol, onnx_path)


def _parity_stats(pairs: list[tuple[np.ndarray, np.ndarray]], atol: float, rtol: float, path: Any) -> dict:
    refs = [ref.astype(np.float64) for ref, _ in pairs]
    diffs = [np.abs(got.astype(np.float64) - ref) for ref, (_, got) in zip(refs, pairs, strict=True)]
    excess = max(float(np.max(d - (atol + rtol * np.abs(r)))) for d, r in zip(diffs, refs, strict=True))
    max_abs = max(float(d.max()) for d in diffs)
    stats = {
        "max_abs": max_abs,
        "mean_abs": float(np.mean(np.concatenate([d.ravel() for d in diffs]))),
        "max_rel": max(float((d / (np.abs(r) + 1e-12)).max()) for d, r in zip(diffs, refs, strict=True)),
        "worst_excess": excess,
        "atol": atol,
        "rtol": rtol,
        "inputs": len(pairs),
        "passed": excess <= 0.0,
    }
    if not stats["passed"]:
        raise BuildError(
            f"ONNX output of {path} differs from torch: max abs error {max_abs:.3g} exceeds the "
            f"tolerance atol={atol:g} + rtol={rtol:g}*|ref| (by {excess:.3g})",
            "check for ops exported differently (e.g. upsampling modes, in-place ops) or raise the tolerance",
        )
    return stats


def model_macs_params(model: Any, input_shape: Sequence[int]) -> dict[str, int]:
    """Count multiply-accumulates and parameters of a torch model with torch-pruning.

    Args:
        model: A ``torch.nn.Module``.
        input_shape: Full input shape including batch.

    Returns:
        ``{"macs": int, "params": int}`` (MACs for one forward pass at ``input_shape``).
    """
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        # torch-pruning's counter prints a warning on stdout for reused modules; keep stdout clean.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            macs, params = tp.utils.count_ops_and_params(model, torch.zeros(tuple(input_shape)))
    finally:
        model.train(was_training)
    return {"macs": int(macs), "params": int(params)}


RAW_DECODE_SUFFIX = ".decode.json"
"""Beside a raw-head program: how the runner turns its maps into ``yolov5`` rows."""


def raw_decode_spec(model: Any) -> dict[str, Any]:
    """How a two-scale detector's raw maps decode (strides, box priors, classes), for the runner.

    Raises:
        ModelError: The model has no raw prediction maps (``raw()`` and per-scale decoders).
    """
    decoders = [getattr(model, name, None) for name in ("decode8", "decode16")]
    if not callable(getattr(model, "raw", None)) or any(d is None for d in decoders):
        raise ModelError(
            f"{type(model).__name__} has no raw prediction maps (raw() and decode8/decode16)",
            "this target needs a detector whose decode can run outside the model (the built-in ones do)",
        )
    return {
        "kind": "yolo-raw",
        "head": "yolov5",
        "maps": [{"stride": int(d.stride), "prior": float(d.prior)} for d in decoders],
    }


def export_raw_program(model: Any, input_shape: Sequence[int], path: str | Path) -> Path:
    """``torch.export`` a program returning the raw prediction maps; write it and its decode spec.

    Full-integer converters cannot keep a decode head (its boxes in pixels and probabilities would share
    one int8 scale, and its grid math stays float): the device computes the maps, the runner decodes.

    Raises:
        ModelError: No raw maps. BuildError: ``torch.export`` rejected the model.
    """
    import torch

    spec = raw_decode_spec(model)

    class RawHead(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return tuple(self.inner.raw(x))

    was_training = model.training
    model.eval()
    dummy = torch.zeros(tuple(int(d) for d in input_shape), dtype=torch.float32)
    path = Path(path)
    try:
        with torch.no_grad():
            program = torch.export.export(RawHead(model).eval(), (dummy,))
        tmp = path.with_name(path.stem + ".tmp.pt2")
        torch.export.save(program, str(tmp))
        tmp.replace(path)
    except Exception as exc:  # torch.export raises many unrelated types
        raise BuildError(f"torch.export failed: {exc}", "make raw() exportable, or give an ONNX") from exc
    finally:
        model.train(was_training)
    atomic_write_json(path.with_name(path.stem + RAW_DECODE_SUFFIX), spec)
    return path
