"""Users' own detectors: an ONNX file with an Ultralytics-style output, or a torch ``module:factory``.

ONNX heads are read from the output shape (see :func:`detect_head`); class names from the ``names``
metadata that Ultralytics exporters write; preprocessing follows the Ultralytics convention (letterbox
with grey 114 padding, RGB, pixels / 255, no mean/std). A torch model is built by the user's own
factory function and gets its weights from a plain state dict.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends.contract.base import BuildOptions, dims, graph_inputs
from edgekit.core.errors import ConfigError, ModelError
from edgekit.data.preprocess import PreprocessSpec
from edgekit.export.onnx import load_checked

HEAD_OFFSETS = {"yolov5": 5, "yolov8": 4, "yolox": 5}
LAYOUTS = (
    "yolov5 [1, N, 5 + nc] (cx, cy, w, h, objectness, classes), yolov8 [1, 4 + nc, N] (no objectness) "
    "or yolox [1, N, 5 + nc] (raw: grid offsets, log sizes, objectness, classes)"
)
HEAD_HINT = "pass --head yolov5 or --head yolov8 (--head yolox for YOLOX's raw rows)"
#: The box axis must be at least this many times longer than the channel axis to be told apart by size.
MIN_AXIS_RATIO = 2
_MAX_METADATA_CHARS = 1_000_000
_SPEC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FLOAT_TYPES = ("float32", "float16", "float64")


# -- head layout ----------------------------------------------------------------------------------------


def detect_head(output_shape: list[int | str] | tuple, num_classes: int | None = None) -> str:
    """Tell a YOLOv5 output ``[1, N, 5+nc]`` from a YOLOv8 output ``[1, 4+nc, N]`` by its shape.

    The box axis N is the long one (thousands of boxes against tens of channels), or the dynamic one
    when one axis is symbolic. ``num_classes``, when given, picks the reading whose channel count
    holds exactly that many classes.

    Args:
        output_shape: The 3-D output shape; symbolic dims may be strings.
        num_classes: Classes the model predicts, if known.

    Returns:
        ``"yolov5"`` or ``"yolov8"``.

    Raises:
        ModelError: The shape is not 3-D, fits neither layout, or fits both (message asks for ``--head``).

    Example:
        >>> detect_head([1, 25200, 85]), detect_head([1, 84, 8400])
        ('yolov5', 'yolov8')
    """
    shape = list(output_shape)
    if len(shape) != 3:
        raise ModelError(f"output shape {shape} is not a detector output; expected {LAYOUTS}", HEAD_HINT)
    readings = _readings(shape[1], shape[2])
    if num_classes is not None:
        matching = [head for head, nc in readings.items() if nc == num_classes]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            raise ModelError(
                f"output shape {shape} does not hold {num_classes} classes under {LAYOUTS}",
                "check --num-classes, or pass --head",
            )
    return _head_by_size(shape, readings)


def detect_graph_head(model: Any, num_classes: int | None = None) -> str:
    """The head layout of an ONNX detector: its first output's shape, then its graph for YOLOX.

    A ``[1, N, 5 + nc]`` output is YOLOv5's decoded rows, or YOLOX's raw ones when ``N`` is one anchor
    per cell of strides 8, 16 and 32 and nothing after the prediction convs exponentiates the sizes
    (YOLOX decodes ``w = e^t * stride`` outside the graph; YOLOv5 has three anchors per cell).

    Raises:
        ModelError: As :func:`detect_head`.
    """
    shape = dims(model.graph.output[0])
    head = detect_head(shape, num_classes)
    if head == "yolov5" and isinstance(shape[1], int) and _raw_yolox(model, shape[1]):
        return "yolox"
    return head


def _raw_yolox(model: Any, count: int) -> bool:
    from edgekit.quantize.graph import decode_tail_nodes, ensure_node_names
    from edgekit.runners.detcore import yolox_grid

    try:
        yolox_grid(count)
    except ValueError:
        return False
    tail = set(decode_tail_nodes(ensure_node_names(model)))
    return not any(node.op_type == "Exp" for node in model.graph.node if node.name in tail)


def _readings(a: int | str, b: int | str) -> dict[str, int | None]:
    """Classes under each head (``None`` = unknown, symbolic channel) for the layouts the dims allow."""
    out: dict[str, int | None] = {}
    if not isinstance(b, int) or b > HEAD_OFFSETS["yolov5"]:
        out["yolov5"] = b - HEAD_OFFSETS["yolov5"] if isinstance(b, int) else None
    if not isinstance(a, int) or a > HEAD_OFFSETS["yolov8"]:
        out["yolov8"] = a - HEAD_OFFSETS["yolov8"] if isinstance(a, int) else None
    return out


def _head_by_size(shape: list[int | str], readings: dict[str, int | None]) -> str:
    a, b = shape[1], shape[2]
    if isinstance(a, int) and isinstance(b, int):
        if a >= MIN_AXIS_RATIO * b and "yolov5" in readings:
            return "yolov5"
        if b >= MIN_AXIS_RATIO * a and "yolov8" in readings:
            return "yolov8"
    elif isinstance(b, int) and "yolov5" in readings:
        return "yolov5"  # symbolic a = number of boxes
    elif isinstance(a, int) and "yolov8" in readings:
        return "yolov8"
    if not readings:
        raise ModelError(f"output shape {shape} is not a detector output; expected {LAYOUTS}", HEAD_HINT)
    raise ModelError(f"cannot tell the head layout from the output shape {shape} ({LAYOUTS})", HEAD_HINT)


# -- ONNX ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxDetector:
    """What edgekit needs to know about a user's ONNX detector.

    Attributes:
        path: The ``.onnx`` file.
        input_name: Name of the image input.
        input_shape: Batch-1 static input shape (dynamic dims resolved).
        output_name: Name of the detector output (the first output).
        output_shape: Output shape as stored in the file (symbolic dims as strings).
        head: ``yolov5`` or ``yolov8``.
        num_classes: Classes in the output.
        class_names: One name per class.
        preprocess: How images become inputs (Ultralytics convention).
        static: True when the file's input shape is fully static (no dims were resolved).
        notes: Warnings raised while reading the file (several outputs, resolved dims...).
    """

    path: Path
    input_name: str
    input_shape: list[int]
    output_name: str
    output_shape: list[int | str]
    head: str
    num_classes: int
    class_names: list[str]
    preprocess: PreprocessSpec
    static: bool = True
    notes: list[str] = field(default_factory=list)

    def build_options(self, **overrides: Any) -> BuildOptions:
        """Return :class:`BuildOptions` carrying this detector's head, classes and preprocessing.

        Example:
            >>> det = inspect_onnx("yolov8n.onnx")  # doctest: +SKIP
            >>> options = det.build_options(threads=2)  # doctest: +SKIP
            >>> get_backend("onnxruntime").build(det.path, options, "out/ort")  # doctest: +SKIP
        """
        base = {
            "head": self.head,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess,
        }
        return BuildOptions(**{**base, **overrides})


def inspect_onnx(
    path: str | Path,
    head: str | None = None,
    class_names: list[str] | None = None,
    input_size: int | None = None,
) -> OnnxDetector:
    """Read a user's ONNX detector: I/O, head layout, classes and preprocessing.

    Args:
        path: The ``.onnx`` file.
        head: ``yolov5`` / ``yolov8`` to skip detection from the shape.
        class_names: Names to use instead of the file's ``names`` metadata.
        input_size: Square input side for a model whose height/width are dynamic.

    Returns:
        The :class:`OnnxDetector`.

    Raises:
        ModelError: Missing / corrupt file, no image input, or an output that is not a detector's.
        ConfigError: ``head`` unknown, or ``class_names`` do not match the output's class count.

    Example:
        >>> det = inspect_onnx("yolov8n.onnx")  # doctest: +SKIP
        >>> det.head, det.num_classes, det.class_names[0]  # doctest: +SKIP
        ('yolov8', 80, 'person')
    """
    path = Path(path)
    proto = load_checked(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    notes: list[str] = []
    inputs, outputs = graph_inputs(proto), list(proto.graph.output)
    if len(inputs) != 1 or not outputs:
        raise ModelError(
            f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; a detector has 1 image input",
            "export the model with a single image input",
        )
    if len(outputs) > 1:
        notes.append(f"{path.name} has {len(outputs)} outputs; using the first, '{outputs[0].name}'")
    _check_task(path, meta)
    input_shape, preprocess, static = _resolve_input(
        path, dims(inputs[0]), _input_dtype(inputs[0]), input_size, meta
    )
    if not static:
        notes.append(f"{path.name}: dynamic input {dims(inputs[0])} resolved to {input_shape}")
    out_shape = dims(outputs[0])
    head = _check_head(head) or detect_graph_head(proto)
    num_classes = _num_classes(out_shape, head)
    names = _class_names(path, num_classes, class_names, meta, notes)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return OnnxDetector(
        path,
        inputs[0].name,
        input_shape,
        outputs[0].name,
        out_shape,
        head,
        num_classes,
        names,
        preprocess,
        static,
        notes,
    )


def _check_head(head: str | None) -> str | None:
    if head is not None and head not in HEAD_OFFSETS:
        raise ConfigError(f"unknown head '{head}'", "use --head yolov5, yolov8 or yolox")
    return head


def _check_task(path: Path, meta: dict[str, str]) -> None:
    task = meta.get("task", "detect")
    if task != "detect":
        raise ModelError(
            f"{path} is an Ultralytics '{task}' model (metadata task={task!r}); edgekit runs detectors",
            "export the detection variant of the model (task=detect)",
        )


def _input_dtype(value_info: Any) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def _resolve_input(
    path: Path, shape: list[int | str], dtype: str, input_size: int | None, meta: dict[str, str]
) -> tuple[list[int], PreprocessSpec, bool]:
    """Batch-1 static input shape and preprocessing for an NCHW/NHWC image input."""
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ModelError(f"{path} input shape {shape} is not a 3-channel image", "export an NCHW image input")
    if dtype not in _FLOAT_TYPES:
        raise ModelError(f"{path} input is {dtype}; edgekit feeds float images", "export with a float input")
    nchw = shape[1] == 3
    batch, hw = shape[0], (shape[2:4] if nchw else shape[1:3])
    if isinstance(batch, int) and batch != 1:
        raise ModelError(f"{path} has a fixed batch of {batch}", "export the model with batch size 1")
    size = _square_size(path, hw, input_size, meta)
    spec = PreprocessSpec(input_size=size, layout="NCHW" if nchw else "NHWC")
    static = all(isinstance(d, int) for d in shape)
    return spec.input_shape(), spec, static


def _square_size(path: Path, hw: list[int | str], input_size: int | None, meta: dict[str, str]) -> int:
    if all(isinstance(d, int) for d in hw):
        if hw[0] != hw[1]:
            raise ModelError(
                f"{path} input is {hw[0]}x{hw[1]}; edgekit's letterbox preprocessing needs a square input",
                "export with a square image size (e.g. imgsz=640)",
            )
        if input_size is not None and input_size != hw[0]:
            raise ConfigError(
                f"input_size {input_size} given but {path} takes {hw[0]} px", "drop --input-size"
            )
        return int(hw[0])
    size = input_size or _metadata_imgsz(meta)
    if size is None:
        raise ModelError(
            f"{path} has a dynamic input size {hw}",
            "pass --input-size (e.g. 640), or export with a fixed size",
        )
    return size


def _metadata_imgsz(meta: dict[str, str]) -> int | None:
    value = _literal(meta.get("imgsz"))
    if isinstance(value, (list, tuple)) and len(set(value)) == 1 and isinstance(value[0], int):
        return value[0]
    return None


def _num_classes(out_shape: list[int | str], head: str) -> int:
    channels = out_shape[1] if head == "yolov8" else out_shape[2]
    if not isinstance(channels, int) or channels <= HEAD_OFFSETS[head]:
        raise ModelError(f"output shape {out_shape} is not a {head} output; expected {LAYOUTS}", HEAD_HINT)
    return channels - HEAD_OFFSETS[head]


def _class_names(
    path: Path, num_classes: int, given: list[str] | None, meta: dict[str, str], notes: list[str]
) -> list[str]:
    if given:
        if len(given) != num_classes:
            raise ConfigError(
                f"{len(given)} class names given but the output of {path} holds {num_classes} classes",
                "give one name per class, or check --head",
            )
        return [str(n) for n in given]
    names = parse_names(meta["names"]) if "names" in meta else None
    if "names" in meta and names is None:
        notes.append(f"{path.name}: cannot read the 'names' metadata; using class0..class{num_classes - 1}")
    if names is not None and len(names) != num_classes:
        raise ModelError(
            f"{path} names {len(names)} classes in its metadata but its output holds {num_classes}",
            "the head layout is probably wrong: pass --head yolov5|yolov8|yolox",
        )
    return names or [f"class{i}" for i in range(num_classes)]


def parse_names(text: str) -> list[str] | None:
    """Parse Ultralytics' ``names`` metadata (``"{0: 'person', 1: 'bicycle'}"`` or a list literal).

    Only Python literals are evaluated (:func:`ast.literal_eval`), never code. Returns ``None`` when
    the text is not a list of names or a dict with keys ``0..n-1``.

    Example:
        >>> parse_names("{0: 'person', 1: 'car'}")
        ['person', 'car']
    """
    value = _literal(text)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict) and sorted(value) == list(range(len(value))):
        return [str(value[i]) for i in range(len(value))]
    return None


def _literal(text: str | None) -> Any:
    if text is None or len(text) > _MAX_METADATA_CHARS:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def static_copy(detector: OnnxDetector, out_path: str | Path) -> Path:
    """Write a copy of the detector's ONNX with its resolved static input shape (batch 1, fixed size).

    Edge runtimes and the runners want fixed shapes; use this for a model exported with dynamic axes.

    Raises:
        ModelError: Shape inference fails on the fixed shape.
    """
    import onnx

    from edgekit.core.files import atomic_write_bytes

    proto = load_checked(detector.path)
    (inp,) = [i for i in graph_inputs(proto) if i.name == detector.input_name]
    for dim, value in zip(inp.type.tensor_type.shape.dim, detector.input_shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        raise ModelError(
            f"cannot fix {detector.path} to input shape {detector.input_shape}: {exc}",
            "export the model with a fixed input size instead",
        ) from exc
    return atomic_write_bytes(out_path, proto.SerializeToString())


# Torch models live in user_torch.py; re-exported here so callers have one place to import from.
from edgekit.models.user_torch import load_state, load_torch_model, read_state_dict  # noqa: E402

__all__ = [
    "detect_head",
    "inspect_onnx",
    "static_copy",
    "OnnxDetector",
    "load_torch_model",
    "read_state_dict",
    "load_state",
    "parse_names",
]
