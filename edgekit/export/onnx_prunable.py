"""Rewrite an ONNX detector so that pruning can follow its channels: one conv per part of a split.

YOLOv8/11's C2f block runs one conv, its activation, then ``Split`` into equal halves along the channels.
A pruner that removes channels of that conv must remove them from both halves alike, which torch-pruning
1.6 does not track through a split (its own YOLOv8 example replaces C2f by two convs for that reason).
The same rewrite here, on the graph: ``Conv → (elementwise activation) → Split`` into ``k`` equal parts
becomes ``k`` convs, each with its rows of the weight and bias and its own copy of the activation. The
outputs are the same numbers (each output channel is computed from the same weights); only the graph's
shape changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Ops that act on each channel alone (with scalar constants), as activations do.
ELEMENTWISE = {"Sigmoid", "Mul", "Add", "Sub", "Div", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid",
               "Clip", "Tanh", "Identity"}  # fmt: skip


def split_conv_outputs(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` with one conv per equal part of each split conv output, and how many.

    Each ``Conv → activation → Split`` (equal parts, channel axis) becomes one conv per part.

    Example:
        >>> rewritten, count = split_conv_outputs(onnx.load("yolov8n.onnx"))  # doctest: +SKIP
        >>> count  # one per C2f block  # doctest: +SKIP
        8
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = onnx.helper.get_attribute_value(node.attribute[0])
            consts[node.output[0]] = np.array(
                numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
            )
    count = 0
    for first_output in [n.output[0] for n in graph.node if n.op_type == "Split"]:
        # each rewrite rebuilds the node list: find the split again in the current one
        split = next(n for n in graph.node if n.op_type == "Split" and n.output[0] == first_output)
        plan = _rewrite_plan(graph, split, consts)
        if plan is None:
            continue
        _apply(graph, split, plan, consts)
        count += 1
    return model, count


def _parts(split: Any, consts: dict[str, np.ndarray]) -> list[int] | None:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in split.attribute}
    if attrs.get("axis", 0) != 1:
        return None
    if len(split.input) > 1 and split.input[1]:
        if split.input[1] not in consts:
            return None
        return [int(v) for v in consts[split.input[1]]]
    if "split" in attrs:
        return [int(v) for v in attrs["split"]]
    return None  # equal parts of an unknown size: the conv's width decides below


def _rewrite_plan(graph: Any, split: Any, consts: dict[str, np.ndarray]) -> dict | None:
    """The conv and the activation chain between it and ``split``, if the rewrite applies."""
    from edgekit.quantize.graph import tensor_consumers, tensor_producers

    producers, consumers = tensor_producers(graph), tensor_consumers(graph)
    chain: list[Any] = []
    frontier, conv = [split.input[0]], None
    seen: set[str] = set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Conv":
            if conv is not None and conv is not node:
                return None
            conv = node
            continue
        if node.op_type not in ELEMENTWISE:
            return None
        chain.append(node)
        for inp in node.input:
            if not inp:
                continue
            if inp in consts:
                if consts[inp].size != 1:
                    return None
                continue
            frontier.append(inp)
    if conv is None or conv.input[1] not in consts or consts[conv.input[1]].ndim != 4:
        return None
    inside = {id(n) for n in chain} | {id(split)}
    for tensor in [conv.output[0], *(out for n in chain for out in n.output)]:
        if any(id(c) not in inside for c in consumers.get(tensor, [])):
            return None  # the conv or its activation feeds something else too
        if tensor in {o.name for o in graph.output}:
            return None
    width = consts[conv.input[1]].shape[0]
    sizes = _parts(split, consts) or [width // len(split.output)] * len(split.output)
    if len(set(sizes)) != 1 or sum(sizes) != width:
        return None
    order = {id(n): i for i, n in enumerate(graph.node)}
    chain.sort(key=lambda n: order[id(n)])
    return {"conv": conv, "chain": chain, "sizes": sizes}


def _apply(graph: Any, split: Any, plan: dict, consts: dict[str, np.ndarray]) -> None:
    import onnx
    from onnx import numpy_helper

    conv, chain, sizes = plan["conv"], plan["chain"], plan["sizes"]
    weight = consts[conv.input[1]]
    bias = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    final = split.input[0]
    new_nodes = []
    start = 0
    for part, (size, out) in enumerate(zip(sizes, split.output, strict=True)):
        tag = f"{conv.name or conv.output[0]}/part{part}"
        w_name = f"{tag}/W"
        graph.initializer.append(numpy_helper.from_array(weight[start : start + size].copy(), w_name))
        inputs = [conv.input[0], w_name]
        if bias is not None:
            b_name = f"{tag}/B"
            graph.initializer.append(numpy_helper.from_array(bias[start : start + size].copy(), b_name))
            inputs.append(b_name)
        start += size
        rename = {conv.output[0]: f"{tag}/out"}
        for node in chain:
            for o in node.output:
                rename[o] = out if o == final else f"{o}/part{part}"
        if conv.output[0] == final:
            rename[conv.output[0]] = out
        new_nodes.append(
            onnx.helper.make_node(
                "Conv",
                inputs,
                [rename[conv.output[0]]],
                name=tag,
                **{a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute},
            )  # fmt: skip
        )
        for node in chain:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{node.name}/part{part}"
            copy.ClearField("input")
            copy.input.extend(rename.get(i, i) for i in node.input)
            copy.ClearField("output")
            copy.output.extend(rename[o] for o in node.output)
            new_nodes.append(copy)
    drop = {id(conv), id(split), *(id(n) for n in chain)}
    kept = []
    for node in graph.node:
        if id(node) == id(split):
            kept.extend(new_nodes)
        if id(node) not in drop:
            kept.append(node)
    graph.ClearField("node")
    graph.node.extend(kept)
