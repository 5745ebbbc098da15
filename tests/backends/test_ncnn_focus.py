"""A Focus layer (four ::2 slices and their concat) becomes one exact convolution for ncnn."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekit.backends.ncnn.backend import strided_slices  # noqa: E402
from edgekit.backends.ncnn.focus import focus_to_conv  # noqa: E402


def _focus_model(size: int = 8, offsets=((0, 0), (1, 0), (0, 1), (1, 1)), axes_first: int = 2):
    """x -> Focus (two slices per offset, height then width or the reverse) -> 1x1 conv."""
    inits = [numpy_helper.from_array(np.array([v], np.int64), f"c{v}") for v in (0, 1, 2, 3)]
    inits.append(numpy_helper.from_array(np.array([2**63 - 1], np.int64), "end"))
    rng = np.random.default_rng(0)
    inits.append(numpy_helper.from_array(rng.normal(size=(5, 12, 1, 1)).astype(np.float32), "w"))
    nodes, parts = [], []
    second = 5 - axes_first
    for k, (a, b) in enumerate(offsets):
        first_start, second_start = (a, b) if axes_first == 2 else (b, a)
        nodes.append(
            helper.make_node(
                "Slice",
                ["x", f"c{first_start}", "end", f"c{axes_first}", "c2"],
                [f"s{k}a"],
                name=f"Slice_{k}a",
            )
        )
        nodes.append(
            helper.make_node(
                "Slice",
                [f"s{k}a", f"c{second_start}", "end", f"c{second}", "c2"],
                [f"s{k}"],
                name=f"Slice_{k}b",
            )
        )
        parts.append(f"s{k}")
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1, name="Concat_focus"))
    nodes.append(helper.make_node("Conv", ["cat", "w"], ["y"], name="Conv_after"))
    graph = helper.make_graph(
        nodes, "focus", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("axes_first", [2, 3])
@pytest.mark.parametrize("offsets", [((0, 0), (1, 0), (0, 1), (1, 1)), ((1, 1), (0, 0), (0, 1), (1, 0))])
def test_focus_becomes_one_exact_convolution(offsets, axes_first):
    model = _focus_model(offsets=offsets, axes_first=axes_first)
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    want = _run(model, x)
    rewritten, replaced = focus_to_conv(model)
    assert replaced == ["Concat_focus"] and not strided_slices(rewritten)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Conv"]
    onnx.checker.check_model(rewritten)
    np.testing.assert_array_equal(_run(rewritten, x), want)


def test_other_strided_slices_are_left_alone():
    odd = _focus_model(size=7)  # ::2 of an odd size keeps the last row: no 2x2 stride-2 conv does that
    assert focus_to_conv(odd)[1] == [] and len(strided_slices(odd)) == 8
    twice = _focus_model(offsets=((0, 0), (0, 0), (0, 1), (1, 1)))  # not the four offsets once each
    assert focus_to_conv(twice)[1] == []
