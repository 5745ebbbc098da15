"""A float ONNX graph as a ``torch.nn.Module``, for converters that take a torch program (TFLite's PT2E).

Only the backbone-and-neck ops a detector has before its prediction convs are covered (convolutions,
activations, pooling, resize, elementwise arithmetic, concat/split/slice, reshapes with constant shapes);
shape arithmetic (``Shape`` → ``Gather`` → ``Concat`` → ``Reshape``) is folded to constants first, using
the static input shape. An op outside the list is a :class:`~edgekit.core.errors.ModelError` naming the op and
its node. Weights become buffers, so ``torch.export`` sees them as constants and the module reproduces
ONNX Runtime's FP32 output (checked by the caller).

Why not onnx2torch: it imports torchvision, which moves torch off the pinned CPU build (see
``../shared/research/toolchains-b.md`` §2c); the few ops here are enough for YOLO-family heads.

Example:
    >>> module = OnnxModule(onnx.load("head.onnx"))  # doctest: +SKIP
    >>> torch.export.export(module, (torch.zeros(1, 3, 96, 96),))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.core.errors import ModelError

_HINT = (
    "cut the graph before this op, or give the torch model (--model module:factory) so the converter "
    "gets the program itself"
)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(node: Any, attrs: dict[str, Any], rank: int = 2) -> tuple[int, ...]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise ModelError(f"{node.op_type} node {node.name!r} uses auto_pad {attrs['auto_pad']!r}", _HINT)
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    return tuple(pads)


def _split_pads(pads: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """ONNX pads (begin..., end...) as (F.pad's extra padding, last axis first; the symmetric part)."""
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    sym = [min(b, e) for b, e in zip(begin, end, strict=True)]
    extra = []
    for b, e, s in reversed(list(zip(begin, end, sym, strict=True))):
        extra += [b - s, e - s]
    return extra, sym


def _pad_then(x: torch.Tensor, pads: tuple[int, ...], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Split ONNX pads (begin..., end...) into symmetric padding and an explicit F.pad for the rest."""
    extra, sym = _split_pads(pads)
    if any(extra):
        x = F.pad(x, extra, value=value)
    return x, sym


class OnnxModule(nn.Module):
    """Evaluate an ONNX graph (one input, float) node by node in torch ops.

    With ``trainable=True`` every convolution with constant weights becomes an ``nn.Conv2d`` whose
    parameters are the exported (BN-folded) weights and bias, so the module can be fine-tuned and
    torch-pruning's dependency graph finds the convs and the concat / split / add between them; a
    ``Split`` into equal parts follows the channels its input has after pruning.
    """

    def __init__(self, model: Any, trainable: bool = False) -> None:
        super().__init__()
        from onnx import numpy_helper

        if trainable:  # a conv whose output is split in equal parts becomes one conv per part
            from edgekit.export.onnx_prunable import split_conv_outputs

            model, self.splits_rewritten = split_conv_outputs(model)

        graph = model.graph
        init_names = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in init_names]
        if len(inputs) != 1:
            raise ModelError(f"the graph has {len(inputs)} inputs; one image input is supported", _HINT)
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in graph.output]
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if not shape or any(d <= 0 for d in shape):
            raise ModelError(f"the input {self.input_name!r} has no static shape {shape}", "export it static")
        self.nodes = _fold_constants(graph, consts, self.input_name, shape)
        self.convs = nn.ModuleDict()
        self._conv_of: dict[str, str] = {}
        if trainable:
            self._make_convs(consts)
        used = {
            name
            for node, _ in self.nodes
            for name in (node.input[:1] if node.name in self._conv_of else node.input)
        }
        self._buffers_of: dict[str, str] = {}
        for i, (name, value) in enumerate(sorted((k, v) for k, v in consts.items() if k in used)):
            key = f"c{i}"
            self.register_buffer(key, torch.from_numpy(np.array(value)), persistent=False)
            self._buffers_of[name] = key
        self.consts = consts
        for node, _ in self.nodes:
            if node.op_type not in OPS:
                raise ModelError(
                    f"{node.op_type} (node {node.name!r}) is not among the ops the ONNX importer covers "
                    f"({', '.join(sorted(OPS))})",
                    _HINT,
                )

    def _make_convs(self, consts: dict[str, np.ndarray]) -> None:
        for index, (node, attrs) in enumerate(self.nodes):
            if node.op_type != "Conv" or node.input[1] not in consts:
                continue
            weight = consts[node.input[1]]
            if weight.ndim != 4:
                continue
            bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            groups = int(attrs.get("group", 1))
            _, sym = _split_pads(_pads(node, attrs))
            conv = nn.Conv2d(
                weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                stride=tuple(attrs.get("strides", [1, 1])), padding=tuple(sym),
                dilation=tuple(attrs.get("dilations", [1, 1])), groups=groups, bias=bias is not None,
            )  # fmt: skip
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.array(weight, np.float32)))
                if bias is not None:
                    conv.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
            key = f"conv{index}"
            self.convs[key] = conv
            self._conv_of[node.name] = key

    def conv_node(self, key: str) -> str:
        """The ONNX node name of ``self.convs[key]``."""
        return next(name for name, k in self._conv_of.items() if k == key)

    def const(self, name: str) -> np.ndarray:
        """A constant input's value (for shapes, axes, scales), or raise naming the node."""
        if name not in self.consts:
            raise ModelError(f"{name!r} is computed at run time where a constant is needed", _HINT)
        return self.consts[name]

    def forward(self, x: torch.Tensor):
        """Run the graph on the image ``x``; a tuple of the graph's outputs in order."""
        env: dict[str, Any] = {self.input_name: x}
        for node, attrs in self.nodes:
            args = [
                env[n] if n in env else getattr(self, self._buffers_of[n]) if n in self._buffers_of else None
                for n in node.input
            ]
            out = OPS[node.op_type](self, node, attrs, args)
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(node.output, outs, strict=False):
                env[name] = value
        result = tuple(env[n] for n in self.output_names)
        return result


def _fold_constants(graph: Any, consts: dict[str, np.ndarray], input_name: str, shape: list[int]):
    """Nodes that stay, with their attributes; constant subgraphs (shape math) evaluated into ``consts``."""
    import onnx
    from onnx import shape_inference
    from onnx.reference import ReferenceEvaluator

    bare = onnx.GraphProto()
    bare.CopyFrom(graph)
    del bare.value_info[:]  # an exporter's symbolic dims would stay; infer every shape from the static input
    for value in list(bare.input) + list(bare.output):
        if value.name == input_name:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=False):
                dim.Clear()
                dim.dim_value = size
    inferred = shape_inference.infer_shapes(onnx.helper.make_model(bare), strict_mode=False).graph
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)
    }
    shapes[input_name] = shape
    unknown = {n.input[0] for n in graph.node if n.op_type == "Shape"} - {
        k for k, v in shapes.items() if v and all(d > 0 for d in v)
    }
    if unknown:  # shape inference lost them (e.g. after a split with computed sizes): run the graph once
        shapes.update(_run_shapes(graph, input_name, shape, sorted(unknown)))
    kept = []
    for node in graph.node:
        attrs = _attrs(node)
        if node.op_type == "Constant":
            consts[node.output[0]] = np.array(
                onnx.numpy_helper.to_array(attrs["value"]) if "value" in attrs else next(iter(attrs.values()))
            )
            continue
        if node.op_type == "Shape" and all(d > 0 for d in shapes.get(node.input[0], [0])):
            full = np.array(shapes[node.input[0]], np.int64)
            start, end = attrs.get("start", 0), attrs.get("end", len(full))
            consts[node.output[0]] = full[start:end]
            continue
        if node.input and all((not n) or n in consts for n in node.input) and node.op_type not in ("Conv",):
            single = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node],
                    "fold",
                    [
                        onnx.helper.make_tensor_value_info(
                            n, onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype), consts[n].shape
                        )
                        for n in node.input
                        if n
                    ],
                    [onnx.helper.make_empty_tensor_value_info(n) for n in node.output],
                ),
                opset_imports=[onnx.helper.make_opsetid("", 17)],
            )
            values = ReferenceEvaluator(single).run(None, {n: consts[n] for n in node.input if n})
            consts.update(zip(node.output, (np.array(v) for v in values), strict=True))
            continue
        kept.append((node, attrs))
    return kept


def _run_shapes(graph: Any, input_name: str, shape: list[int], names: list[str]) -> dict[str, list[int]]:
    """The shapes of tensors ``names``, from one ONNX Runtime run of the graph on zeros."""
    import onnx
    import onnxruntime as ort

    g = onnx.GraphProto()
    g.CopyFrom(graph)
    known = {o.name for o in g.output}
    g.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values = sess.run(names, {input_name: np.zeros(shape, np.float32)})
    except Exception:  # noqa: BLE001 - without the shapes, the op check below names what is left
        return {}
    return {n: list(v.shape) for n, v in zip(names, values, strict=True)}


# -- op table: (module, node, attrs, args) -> tensor or tuple ------------------------------------------
Op = Callable[[OnnxModule, Any, dict, list], Any]


def _conv(m: OnnxModule, node, a, args):
    if node.name in m._conv_of:
        x, _ = _pad_then(args[0], _pads(node, a))
        return m.convs[m._conv_of[node.name]](x)
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    x, sym = _pad_then(x, _pads(node, a))
    return F.conv2d(
        x,
        w,
        b,
        tuple(a.get("strides", [1, 1])),
        tuple(sym),
        tuple(a.get("dilations", [1, 1])),
        a.get("group", 1),
    )


def _pool(kind: str) -> Op:
    def op(m: OnnxModule, node, a, args):
        x, sym = _pad_then(args[0], _pads(node, a), value=float("-inf") if kind == "max" else 0.0)
        k, s = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            return F.max_pool2d(x, k, s, tuple(sym), ceil_mode=ceil)
        return F.avg_pool2d(
            x, k, s, tuple(sym), ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0))
        )

    return op


def _resize(m: OnnxModule, node, a, args):
    x = args[0]
    names = list(node.input) + [""] * 4
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if node.op_type == "Upsample":
        scales = m.const(names[1])
        sizes = None
    else:
        scales = m.const(names[2]) if names[2] and m.const(names[2]).size else None
        sizes = m.const(names[3]) if names[3] else None
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if mode == "nearest":
        kw: dict[str, Any] = {"mode": "nearest"}
    elif mode == "linear":
        kw = {"mode": "bilinear", "align_corners": ctm == "align_corners"}
    else:
        raise ModelError(f"Resize node {node.name!r} uses mode {mode!r}", _HINT)
    if sizes is not None:
        return F.interpolate(x, size=tuple(int(s) for s in sizes[2:]), **kw)
    return F.interpolate(x, scale_factor=tuple(float(s) for s in scales[2:]), **kw)


def _clip(m: OnnxModule, node, a, args):
    names = list(node.input) + ["", ""]
    lo = float(m.const(names[1])) if names[1] else a.get("min", float("-inf"))
    hi = float(m.const(names[2])) if names[2] else a.get("max", float("inf"))
    return torch.clamp(args[0], lo, hi)


def _concat(m, node, a, args):
    return torch.cat(args, dim=a["axis"])


def _split(m: OnnxModule, node, a, args):
    axis = a.get("axis", 0)
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(s) for s in m.const(node.input[1])]
    elif "split" in a:
        sizes = list(a["split"])
    else:
        n = a.get("num_outputs", len(node.output))
        sizes = [args[0].shape[axis] // n] * n
    if m.convs and len(set(sizes)) == 1:  # equal parts (a C2f's halves) follow the channels after pruning
        part = args[0].shape[axis] // len(sizes)
        return tuple(torch.split(args[0], [part] * len(sizes), dim=axis))
    if sum(sizes) != args[0].shape[axis]:
        raise ModelError(
            f"Split node {node.name!r} cuts {sum(sizes)} channels into {sizes}, its input has "
            f"{args[0].shape[axis]}: unequal parts cannot follow pruning",
            "keep the convs feeding this split out of pruning",
        )
    return tuple(torch.split(args[0], sizes, dim=axis))


def _slice(m: OnnxModule, node, a, args):
    x = args[0]
    names = list(node.input) + [""] * 5
    starts, ends = m.const(names[1]), m.const(names[2])
    axes = m.const(names[3]) if names[3] else np.arange(len(starts))
    steps = m.const(names[4]) if names[4] else np.ones(len(starts), np.int64)
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        dim = x.shape[int(ax)]
        e = min(int(e), dim) if int(e) >= 0 else int(e)
        index[int(ax)] = slice(int(s), e, int(st))
    return x[tuple(index)]


def _reshape(m: OnnxModule, node, a, args):
    shape = [int(s) for s in m.const(node.input[1])]
    shape = [args[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    batch = args[0].shape[0] if args[0].ndim else 1
    if (
        shape
        and shape[0] == 1
        and batch > 1
        and (-1 in shape or int(np.prod(shape)) * batch == args[0].numel())
    ):
        shape[0] = batch  # the graph was exported for one image; training runs batches
    return args[0].reshape(shape)


def _axes(m: OnnxModule, node, a) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return [int(v) for v in m.const(node.input[1])]
    return list(a["axes"]) if "axes" in a else None


def _reduce_mean(m: OnnxModule, node, a, args):
    axes = _axes(m, node, a)
    return args[0].mean(
        dim=axes if axes is not None else list(range(args[0].ndim)), keepdim=bool(a.get("keepdims", 1))
    )


def _batchnorm(m, node, a, args):
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _fold(fn: Callable, xs: list) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


def _unsqueeze(m: OnnxModule, node, a, args):
    x = args[0]
    for axis in sorted(_axes(m, node, a) or []):
        x = x.unsqueeze(axis if axis >= 0 else axis + x.ndim + 1)
    return x


def _squeeze(m: OnnxModule, node, a, args):
    axes = _axes(m, node, a)
    if axes is None:
        return args[0].squeeze()
    return args[0].squeeze(tuple(ax if ax >= 0 else ax + args[0].ndim for ax in axes))


def _gather(m: OnnxModule, node, a, args):
    index = torch.from_numpy(np.asarray(m.const(node.input[1]), np.int64))
    return torch.index_select(args[0], a.get("axis", 0), index.reshape(-1)).reshape(
        *args[0].shape[: a.get("axis", 0) % args[0].ndim], *index.shape,
        *args[0].shape[a.get("axis", 0) % args[0].ndim + 1 :],
    )  # fmt: skip


def _cast(m: OnnxModule, node, a, args):
    if a.get("to") not in (1, None):  # float32; anything else would change what the graph computes
        raise ModelError(f"Cast node {node.name!r} casts to ONNX type {a.get('to')}", _HINT)
    return args[0].float()


def _pad(m: OnnxModule, node, a, args):
    mode = a.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise ModelError(f"Pad node {node.name!r} uses mode {mode!r}", _HINT)
    pads = [int(p) for p in m.const(node.input[1])]
    value = float(m.const(node.input[2])) if len(node.input) > 2 and node.input[2] else 0.0
    rank = len(pads) // 2
    torch_pads: list[int] = []
    for i in reversed(range(rank)):
        torch_pads += [pads[i], pads[i + rank]]
    return F.pad(args[0], torch_pads, value=value)


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Relu": lambda m, n, a, x: F.relu(x[0]),
    "LeakyRelu": lambda m, n, a, x: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda m, n, a, x: torch.sigmoid(x[0]),
    "Tanh": lambda m, n, a, x: torch.tanh(x[0]),
    "HardSigmoid": lambda m, n, a, x: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda m, n, a, x: F.hardswish(x[0]),
    "Clip": _clip,
    "Add": lambda m, n, a, x: x[0] + x[1],
    "Sub": lambda m, n, a, x: x[0] - x[1],
    "Mul": lambda m, n, a, x: x[0] * x[1],
    "Div": lambda m, n, a, x: x[0] / x[1],
    "MatMul": lambda m, n, a, x: torch.matmul(x[0], x[1]),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda m, n, a, x: F.adaptive_avg_pool2d(x[0], 1),
    "ReduceMean": _reduce_mean,
    "Resize": _resize,
    "Upsample": _resize,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": lambda m, n, a, x: torch.flatten(x[0], a.get("axis", 1)),
    "Transpose": lambda m, n, a, x: x[0].permute(*a["perm"]),
    "Identity": lambda m, n, a, x: x[0],
    "BatchNormalization": _batchnorm,
    "Pad": _pad,
    "Softmax": lambda m, n, a, x: torch.softmax(x[0], a.get("axis", -1)),
    "Pow": lambda m, n, a, x: torch.pow(x[0], x[1]),
    "Exp": lambda m, n, a, x: torch.exp(x[0]),
    "Log": lambda m, n, a, x: torch.log(x[0]),
    "Sqrt": lambda m, n, a, x: torch.sqrt(x[0]),
    "Neg": lambda m, n, a, x: -x[0],
    "Abs": lambda m, n, a, x: torch.abs(x[0]),
    "Erf": lambda m, n, a, x: torch.erf(x[0]),
    "Max": lambda m, n, a, x: _fold(torch.maximum, x),
    "Min": lambda m, n, a, x: _fold(torch.minimum, x),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Gather": _gather,
    "Cast": _cast,
}
