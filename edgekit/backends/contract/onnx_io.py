"""ONNX I/O helpers shared by every backend: load with clear errors, read the detector's I/O, check it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.core.errors import ConfigError, ModelError
from edgekit.data.preprocess import PreprocessSpec


def load_onnx(onnx_path: str | Path) -> Any:
    """Load an ONNX file (with external data) or raise :class:`ModelError`."""
    import onnx  # heavy: keep `import edgekit` light

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file {path} not found", "check the path (export the model first)")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-ish errors or OSError
        raise ModelError(
            f"{path} is a corrupt or truncated ONNX file ({type(exc).__name__}: {str(exc)[:200]})",
            "re-export the model or copy the file again (compare its sha256 with the source)",
        ) from exc


def model_io(model: Any, options: Any) -> dict[str, Any]:
    """Return the ``input``, ``preprocess`` and ``output`` blocks of ``artifact.json``."""
    from onnx import helper

    inp = graph_inputs(model)[0]
    out = model.graph.output[0]
    in_type = inp.type.tensor_type
    pre = options.preprocess or derive_preprocess(dims(inp))
    return {
        "input": {
            "name": inp.name,
            "shape": dims(inp),
            "dtype": helper.tensor_dtype_to_np_dtype(in_type.elem_type).name,
            "layout": pre.layout,
        },
        "preprocess": pre.model_dump(mode="json"),
        "output": {
            "name": out.name,
            "head": options.head,
            "shape": dims(out),
            "num_classes": options.num_classes or infer_num_classes(dims(out), options.head),
            "class_names": list(options.class_names),
        },
    }


def graph_inputs(model: Any) -> list[Any]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def dims(value_info: Any) -> list[int | str]:
    """Static dims as ints, symbolic ones as their name (or ``"?"``)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def derive_preprocess(input_dims: list[int | str]) -> PreprocessSpec:
    """Default preprocessing for a static square image input (NCHW if dim 1 is 3, else NHWC)."""
    nchw = len(input_dims) == 4 and input_dims[1] == 3
    hw = input_dims[2:4] if nchw else input_dims[1:3]
    try:
        if len(input_dims) != 4 or hw[0] != hw[1] or not isinstance(hw[0], int):
            raise ValueError("need a static, square 4-D image input")
        return PreprocessSpec(input_size=hw[0], layout="NCHW" if nchw else "NHWC")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            f"cannot derive preprocessing from the input shape {input_dims}: {exc}",
            "pass BuildOptions(preprocess=PreprocessSpec(...)) matching the model input",
        ) from exc


def infer_num_classes(out_dims: list[int | str], head: str) -> int:
    """Read the class count from a static ``yolov5`` / ``yolox`` / ``yolov8`` output shape."""
    channel = None if len(out_dims) != 3 else out_dims[1] if head == "yolov8" else out_dims[2]
    offset = 4 if head == "yolov8" else 5
    if not isinstance(channel, int) or channel <= offset:
        raise ConfigError(
            f"cannot read num_classes from the {head} output shape {out_dims}",
            "pass num_classes in the build options, or check the head (yolov5 vs yolov8)",
        )
    return channel - offset


def generic_problems(model: Any, options: Any) -> list[Any]:
    """Problems every backend shares: one 4-D image input, a detector output, matching preprocessing."""
    from edgekit.backends.contract.base import Problem

    found = _io_mismatch(model, options)
    return [Problem("error", found[0], found[1])] if found else []


def _io_mismatch(model: Any, options: Any) -> tuple[str, str] | None:
    inputs, outputs = graph_inputs(model), model.graph.output
    if len(inputs) != 1 or not outputs:
        return f"expected 1 input and >= 1 output, got {len(inputs)} and {len(outputs)}", "export 1 input"
    shape, out_shape = dims(inputs[0]), dims(outputs[0])
    if len(shape) != 4:
        return f"input '{inputs[0].name}' has shape {shape}, expected 4-D", "export an NCHW image input"
    pre = options.preprocess
    if pre is not None and all(isinstance(d, int) for d in shape) and shape != pre.input_shape():
        return f"input shape {shape} does not match preprocess {pre.input_shape()}", "fix input_size / layout"
    if out_shape and len(out_shape) != 3:
        layout = "[1, N, 5 + nc]" if options.head == "yolov5" else "[1, 4 + nc, N]"
        return f"output shape {out_shape} is not a {options.head} output {layout}", "export the decoded head"
    try:
        found = infer_num_classes(out_shape, options.head)
    except ConfigError:
        return None  # dynamic output: nothing to cross-check
    if options.num_classes is not None and found != options.num_classes:
        msg = f"output shape {out_shape} holds {found} classes for head {options.head}"
        return f"{msg}, options say {options.num_classes}", "fix num_classes or head"
    return None
