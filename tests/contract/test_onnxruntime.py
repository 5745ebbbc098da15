"""ONNX Runtime passes the backend contract (fp32 and QDQ int8), plus ORT-specific checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.core.errors import ConfigError, ModelError, UnsupportedOpError
from edgekit.core.registry import BACKENDS
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, BackendContract


class _RandomReader:
    """ORT calibration reader over seeded random images (the op-level contract, not accuracy)."""

    def __init__(self, input_name: str, n: int = 16) -> None:
        rng = np.random.default_rng(2)
        self._batches = iter(
            [{input_name: rng.random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)} for _ in range(n)]
        )

    def get_next(self):
        return next(self._batches, None)


def quantize_qdq(src: Path, dst: Path) -> Path:
    """Both convs INT8, the decode in float (as edgekit quantizes: one int8 scale for pixel boxes and
    probabilities moves a quarter of this toy's 8 px boxes past IoU 0.5, which the build's check refuses)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgekit.quantize.graph import decode_tail_nodes, ensure_node_names

    named = ensure_node_names(onnx.load(str(src)))
    onnx.save(named, str(dst.with_suffix(".named.onnx")))
    reader = type("Reader", (_RandomReader, CalibrationDataReader), {})("images")
    quantize_static(
        str(dst.with_suffix(".named.onnx")),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=decode_tail_nodes(named),
    )
    return dst


class TestOnnxRuntimeContract(BackendContract):
    backend_name = "onnxruntime"
    precisions = ("fp32", "int8")
    # fp32: same runtime, same graph -> float rounding only. int8 (random weights, random
    # calibration): measured max error 0.13 px on boxes of a 32 px input and 0.06 on scores.
    tolerances = {"fp32": {"boxes": 1e-4, "scores": 1e-5}, "int8": {"boxes": 0.25, "scores": 0.08}}

    def prepare_onnx(self, fp32_onnx: Path, precision: str, work: Path) -> Path:
        if precision == "int8":
            return quantize_qdq(fp32_onnx, work / "tiny_int8_qdq.onnx")
        return fp32_onnx

    def options(self, precision: str) -> dict:
        opts = super().options(precision)
        if precision == "int8":
            opts["quantizer"] = {"method": "minmax", "per_channel": False, "weight_bits": 8}
        return opts

    def test_artifact_records_quantization(self, artifact, precision):
        ops = {n.op_type for n in onnx.load(str(artifact.path())).graph.node}
        has_qdq = {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert has_qdq == (precision == "int8")
        if precision == "int8":
            assert artifact.meta["quantization"]["method"] == "minmax"
            assert (
                artifact.meta["int8_source"] == "qdq" and artifact.meta["calibration"]["name"] == "contract"
            )
        else:
            assert artifact.meta["quantization"] is None and artifact.meta["calibration"] is None

    def test_quantizer_options_are_typed(self, backend, fp32_onnx, work):
        with pytest.raises(ConfigError, match="quantizer"):
            backend.validate_options({"precision": "int8", "quantizer": {"method": "minmax", "bogus": 1}})
        with pytest.raises(ConfigError, match="method"):
            backend.validate_options({"precision": "int8", "quantizer": {"method": "kl"}})


def _single_op_model(path: Path, op: str, elem: int) -> Path:
    """``x [1,3,8,8] -> op -> Reshape -> y [1, 24, 8]`` (a yolov5-shaped output with 3 classes)."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 24, 8])
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["t"], name="n0"), helper.make_node("Reshape", ["t", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", elem, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", elem, [1, 24, 8])],
        initializer=[shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def ort_backend():
    return BACKENDS.create("onnxruntime")


def test_known_op_with_unsupported_type_is_named(ort_backend, tmp_path):
    # onnx allows Relu on int16; ORT's CPU provider has no int16 kernel.
    src = _single_op_model(tmp_path / "relu16.onnx", "Relu", TensorProto.INT16)
    with pytest.raises(UnsupportedOpError, match="Relu") as info:
        ort_backend.build(src, {"num_classes": 3}, tmp_path / "out")
    assert info.value.ops == ["Relu"]
    assert not (tmp_path / "out").exists()


def test_unknown_standard_op_is_named(ort_backend, tmp_path):
    src = _single_op_model(tmp_path / "bogus.onnx", "NotAnOp", TensorProto.FLOAT)
    problems = ort_backend.check(src, {"num_classes": 3})
    assert [p.ops for p in problems] == [("NotAnOp",)]


def test_int8_needs_a_quantized_model(ort_backend, tmp_path):
    from tests.contract.backend_contract import make_tiny_detector_onnx

    src = make_tiny_detector_onnx(tmp_path / "fp32.onnx")
    with pytest.raises(ModelError, match="QDQ") as info:
        ort_backend.build(src, {"precision": "int8", "num_classes": NUM_CLASSES}, tmp_path / "out")
    assert "edgekit quantize" in info.value.hint
    with pytest.raises(ConfigError, match="cannot build precision 'fp16'"):
        ort_backend.build(src, {"precision": "fp16"}, tmp_path / "out")
    with pytest.raises(ModelError, match="holds 3 classes for head yolov5, options say 7"):
        ort_backend.build(src, {"num_classes": 7}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
