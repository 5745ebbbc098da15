"""A Focus layer (space-to-depth by strided slices, YOLOv5 <= v5 and YOLOX) as one convolution, for ncnn.

A Focus layer takes ``x[..., a::2, b::2]`` for the four offsets ``(a, b)`` and concatenates them on the
channels. pnnx leaves a strided slice as ``Tensor.slice``, which ncnn has no layer for. The same
rearrangement is a 2x2 stride-2 convolution with ``4 C`` outputs whose weights are one-hot: output
channel ``g * C + c`` copies input channel ``c`` at kernel position ``(a, b)`` of the ``g``-th slice in
the concat. In float the result is exact (one product by 1 and additions of 0 per value), so the
FP32 check of the build holds it to the same tolerance as any conversion.

Only that pattern is rewritten: a ``Concat`` on the channel axis whose inputs are each one or two
``Slice`` nodes on the same tensor, stepping 2 over the height and the width from offsets 0 or 1 to
the end, the four offsets once each, on a tensor of static, even height and width. Other strided slices
are left as they are (and still refused by the ncnn backend, with their names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Slice ends at or above this mean "to the end" (exporters write INT64_MAX or INT32_MAX).
_TO_END = 2**31 - 1


def _constants(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _slice_chain(name: str, producers: dict, consts: dict) -> tuple[str, dict[int, int]] | None:
    """``(source tensor, {axis: start})`` of a chain of step-2 slices to the end over axes 2/3, or None."""
    starts: dict[int, int] = {}
    for _ in range(2):
        node = producers.get(name)
        if node is None or node.op_type != "Slice" or len(node.input) < 5:
            break
        values = [consts.get(i) for i in node.input[1:5]]
        if any(v is None for v in values):
            return None
        begin, end, axes, steps = (np.asarray(v).ravel().astype(np.int64) for v in values)
        for b, e, a, s in zip(begin, end, axes, steps, strict=True):
            axis = int(a) + 4 if a < 0 else int(a)
            if axis not in (2, 3) or s != 2 or b not in (0, 1) or e < _TO_END or axis in starts:
                return None
            starts[axis] = int(b)
        name = node.input[0]
    return (name, starts) if set(starts) == {2, 3} else None


def _shape(model: Any, name: str) -> list[int | None]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for info in [*inferred.graph.input, *inferred.graph.value_info]:
        if info.name == name:
            return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return []


def focus_to_conv(model: Any) -> tuple[Any, list[str]]:
    """Rewrite every Focus layer of ``model`` (an ``onnx.ModelProto``, changed in place) as a convolution.

    Returns:
        The model and the names of the Concat nodes replaced (empty: nothing to rewrite).

    Example:
        >>> model, replaced = focus_to_conv(onnx.load("yolox.onnx"))  # doctest: +SKIP
        >>> replaced  # doctest: +SKIP
        ['Concat_40']
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consts = _constants(model)
    replaced, dead = [], set()
    for concat in list(graph.node):
        axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
        if concat.op_type != "Concat" or axis not in (1, -3) or len(concat.input) != 4:
            continue
        chains = [_slice_chain(i, producers, consts) for i in concat.input]
        if any(c is None for c in chains) or len({c[0] for c in chains}) != 1:
            continue
        offsets = [(c[1][2], c[1][3]) for c in chains]
        source = chains[0][0]
        shape = _shape(model, source)
        if sorted(offsets) != [(0, 0), (0, 1), (1, 0), (1, 1)] or len(shape) != 4:
            continue
        channels, height, width = shape[1:]
        if not channels or not height or not width or height % 2 or width % 2:
            continue
        weight = np.zeros((4 * channels, channels, 2, 2), np.float32)
        for group, (a, b) in enumerate(offsets):
            weight[group * channels + np.arange(channels), np.arange(channels), a, b] = 1.0
        weight_name = f"{concat.name or concat.output[0]}_focus_weight"
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        conv = helper.make_node(
            "Conv", [source, weight_name], list(concat.output), name=f"{weight_name[: -len('_weight')]}",
            kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
        )  # fmt: skip
        index = list(graph.node).index(concat)
        graph.node.remove(concat)
        graph.node.insert(index, conv)
        replaced.append(concat.name or concat.output[0])
        dead.update(concat.input)
    _drop_unused_slices(graph, dead)
    return model, replaced


def _drop_unused_slices(graph: Any, candidates: set[str]) -> None:
    """Remove the slice nodes whose outputs nothing reads any more (walking up the chains)."""
    while candidates:
        used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        drop = [
            n
            for n in graph.node
            if n.op_type == "Slice" and n.output[0] in candidates and n.output[0] not in used
        ]
        if not drop:
            return
        candidates = {n.input[0] for n in drop}
        for node in drop:
            graph.node.remove(node)
    read = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
