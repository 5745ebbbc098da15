"""Read an ONNX detector's graph: which convs predict, which nodes decode, which nodes can be quantized.

A detector's final 1x1 "prediction" convs and the decode that follows them (sigmoid, grid offsets,
stride multiply, concat of boxes in pixels with scores in 0..1) carry most of the INT8 loss; these
helpers find them structurally, without relying on layer names.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# Ops whose weights and FLOPs dominate; these are the layers sensitivity analysis ranks.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# A node of these types only looks at its input's shape, so values do not flow through it.
_SHAPE_ONLY_OPS = {"Shape", "Size"}
# Ops a DFL-style decode puts between the softmax and its fixed-weight conv.
_DFL_PASSTHROUGH = {"Reshape", "Transpose", "Softmax"}


def tensor_producers(graph: Any) -> dict[str, Any]:
    """The node that writes each tensor of an ONNX graph."""
    return {out: node for node in graph.node for out in node.output if out}


def tensor_consumers(graph: Any) -> dict[str, list[Any]]:
    """The nodes that read each tensor of an ONNX graph."""
    table: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                table[name].append(node)
    return table


def ensure_node_names(model: Any) -> Any:
    """Give every unnamed node a unique name (``<op>_<index>``) in place; the quantizer needs names.

    Args:
        model: An ``onnx.ModelProto``.

    Returns:
        The same model.
    """
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    return model


def node_names(model: Any) -> list[str]:
    """Return all node names in graph order."""
    return [node.name for node in model.graph.node]


def quantizable_nodes(model: Any, op_types: tuple[str, ...] = COMPUTE_OPS) -> list[str]:
    """Return the names of nodes whose op type is in ``op_types`` (default: the compute ops).

    Args:
        model: An ``onnx.ModelProto``.
        op_types: Op types to list.
    """
    return [node.name for node in model.graph.node if node.op_type in op_types]


def _fed_by_softmax(node: Any, producers: dict[str, Any]) -> bool:
    """True for the fixed-weight conv of a DFL decode (YOLOv8): Softmax -> [Reshape/Transpose] -> Conv."""
    current = producers.get(node.input[0])
    while current is not None and current.op_type in _DFL_PASSTHROUGH:
        if current.op_type == "Softmax":
            return True
        current = producers.get(current.input[0]) if current.input else None
    return False


def _walk_back_to_convs(model: Any) -> tuple[list[Any], set[str]]:
    """Walk from the graph outputs towards the input, stopping at the first Conv on each path.

    Returns:
        (prediction conv nodes in graph order, names of the nodes crossed on the way).
    """
    graph = model.graph
    producers = tensor_producers(graph)
    stack = [producers[o.name] for o in graph.output if o.name in producers]
    seen: set[str] = set()
    found: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv" and not _fed_by_softmax(node, producers):
            found.add(node.name)
            continue
        if node.op_type in _SHAPE_ONLY_OPS:
            continue
        stack.extend(producers[name] for name in node.input if name in producers)
    convs = [node for node in graph.node if node.name in found]
    return convs, seen - found


def prediction_convs(model: Any) -> list[str]:
    """Find the final prediction Conv node(s) of a detector.

    A prediction conv is a Conv from which a graph output is reachable without passing another Conv
    (a DFL decode's fixed-weight conv, fed by a Softmax, does not count: it is part of the decode).
    Works for a single-head ``conv -> sigmoid/decode -> concat`` graph and for Ultralytics YOLOv5/v8
    exports with one prediction conv per scale (and per branch).

    Args:
        model: An ``onnx.ModelProto`` (nodes must be named; see :func:`ensure_node_names`).

    Returns:
        Node names in graph order.
    """
    convs, _ = _walk_back_to_convs(model)
    return [node.name for node in convs]


def decode_tail_nodes(model: Any) -> list[str]:
    """Return every node downstream of the prediction convs (the decode), in graph order.

    These nodes mix box coordinates in pixels with probabilities in 0..1, so they are kept in float.

    Args:
        model: An ``onnx.ModelProto``.
    """
    graph = model.graph
    consumers = tensor_consumers(graph)
    convs, _ = _walk_back_to_convs(model)
    tail: set[str] = set()
    stack = [c for conv in convs for out in conv.output for c in consumers.get(out, [])]
    while stack:
        node = stack.pop()
        if node.name in tail:
            continue
        tail.add(node.name)
        stack.extend(c for out in node.output for c in consumers.get(out, []))
    return [node.name for node in graph.node if node.name in tail]


def keep_float_auto(model: Any) -> list[str]:
    """The default float set: prediction convs followed by the decode tail."""
    return prediction_convs(model) + decode_tail_nodes(model)


def unknown_nodes(model: Any, names: list[str]) -> list[str]:
    """Return the names in ``names`` that are not nodes of ``model``."""
    known = set(node_names(model))
    return [name for name in names if name not in known]


def feeding_convs(model: Any, convs: list[str], depth: int) -> list[str]:
    """Convs that reach one of ``convs`` through at most ``depth - 1`` other convs (``depth`` 0: none).

    With the prediction convs, ``depth`` 1 adds the convs right before them (a YOLOv8 head's branch
    convs), 2 the ones before those. Non-conv nodes (activations, splits, concats) are walked through.
    """
    producers = tensor_producers(model.graph)
    by_name = {node.name: node for node in model.graph.node}
    found: set[str] = set()
    frontier = [by_name[name] for name in convs if name in by_name]
    for _ in range(depth):
        level: set[str] = set()
        stack = [producers[i] for node in frontier for i in node.input if i in producers]
        seen: set[str] = set()
        while stack:
            node = stack.pop()
            if node.name in seen or node.op_type in _SHAPE_ONLY_OPS:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                level.add(node.name)
            else:
                stack.extend(producers[i] for i in node.input if i in producers)
        found |= level - set(convs)
        frontier = [by_name[name] for name in level]
    return [node.name for node in model.graph.node if node.name in found]
