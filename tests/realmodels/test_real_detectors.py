"""Real, trained detectors others published (PyPI wheels) through every CPU runtime's INT8, judged by
their detections against FP32 on real photographs (agreement with FP32, not mAP: no labels here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.build import build_artifact
from tests.realmodels.conftest import real_model
from tests.realmodels.fetch import models

#: The goal the issue sets for INT8 on a real detector: >= 95 % of FP32's detections kept, mean score
#: error <= 0.05 (the same limits as the build's own check; asserted here on what it recorded).
MIN_KEPT, MAX_SCORE_ERROR = 0.95, 0.05


def _build(name: str, backend: str, precision: str, out: Path, root: Path, method: str = "default"):
    spec = models()[name]
    return build_artifact(
        backend, precision, real_model(name), out, calib="photos", calib_root=root, method=method,
        preprocess=spec["preprocess"] or None,
    )  # fmt: skip


def _build_yolox(backend: str, quantizer: dict, out: Path, root: Path):
    """The real YOLOX's INT8 on ``backend`` with these quantizer options (its 0..255 BGR preprocessing)."""
    from edgekit.calib import CalibrationSet
    from edgekit.core.registry import get_backend
    from edgekit.models.user import inspect_onnx

    det = inspect_onnx(real_model("ddddocr-yolox"))
    spec = det.preprocess.model_validate(
        {**det.preprocess.model_dump(), **models()["ddddocr-yolox"]["preprocess"]}
    )
    options = {"precision": "int8", "preprocess": spec.model_dump(), "head": det.head, "quantizer": quantizer}
    cs = CalibrationSet.load("photos", root=root).verify()
    return get_backend(backend).build(real_model("ddddocr-yolox"), options, out, calib=cs)


def _agreement(artifact) -> dict:
    figures = artifact.meta["parity"]["detections"]
    assert figures["detections"] >= 3, (
        "the check images must hold detections for the figures to mean anything"
    )
    return figures


@pytest.mark.parametrize("name", ["nudenet-yolov8n", "ddddocr-yolox", "doclaynet-yolov8n"])
def test_head_is_read_from_the_real_graph(name):
    from edgekit.models.user import inspect_onnx

    det = inspect_onnx(real_model(name))
    assert det.head == models()[name]["head"]


def test_fp32_build_keeps_every_detection_exactly(tmp_path, photos_root):
    artifact = _build("nudenet-yolov8n", "onnxruntime", "fp32", tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] == 1.0 and figures["score_error"] < 1e-4 and figures["added"] == 0


@pytest.mark.parametrize("name", ["nudenet-yolov8n", "ddddocr-yolox"])
def test_onnxruntime_int8_keeps_the_detections(tmp_path, photos_root, name):
    import onnxruntime as ort

    artifact = _build(name, "onnxruntime", "int8", tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    ort.InferenceSession(str(artifact.path("model")), providers=["CPUExecutionProvider"])
    kept_float = artifact.meta["quantization"]["keep_float"]
    assert any("Conv" in node for node in kept_float)  # the prediction convs stayed float, and say so
    assert artifact.meta["quantization"]["quantized_nodes"] > 20


def test_opset_11_model_is_raised_to_13_for_per_channel_int8(tmp_path, photos_root):
    import onnx

    assert models()["ddddocr-yolox"]["opset"] < 13
    artifact = _build("ddddocr-yolox", "onnxruntime", "int8", tmp_path / "a", photos_root, method="minmax")
    model = onnx.load(str(artifact.path("model")))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    axes = [
        a.i
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        for a in n.attribute
        if a.name == "axis"
    ]
    assert axes, "per-channel weights carry DequantizeLinear axis"


def test_ncnn_int8_default_keeps_the_detections(tmp_path, photos_root, ncnn_tools):
    """With the tests' 64 photos no method keeps them with the head alone in float (86 % of 7 kept, or a
    score error of 0.09); the default search goes on to the layers ranked most sensitive."""
    artifact = _build("nudenet-yolov8n", "ncnn", "int8", tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    tried = artifact.meta["calibration_search"]
    assert tried[-1]["method"] == artifact.meta["quantization"]["method"] and "error" not in tried[-1]
    assert artifact.meta["ncnn"]["int8"]["float_layers"]  # the head convs, listed


def test_ncnn_builds_yolox_with_its_focus_layer_as_a_convolution(tmp_path, photos_root, ncnn_tools):
    artifact = _build("ddddocr-yolox", "ncnn", "fp32", tmp_path / "a", photos_root)
    assert artifact.meta["ncnn"]["focus_as_conv"] == ["Concat_40"]
    figures = _agreement(artifact)
    assert figures["kept"] == 1.0 and figures["score_error"] < 1e-3 and figures["added"] == 0


def test_ncnn_int8_keeps_yolox_detections_with_its_most_sensitive_layers_in_float(
    tmp_path, photos_root, ncnn_tools
):
    """ACIQ with the head alone in float loses YOLOX detections; ranked layers in float keep them."""
    artifact = _build_yolox("ncnn", {"method": "aciq", "float_ranked": 8}, tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    int8 = artifact.meta["ncnn"]["int8"]
    ranked = [row["layer"] for row in int8["sensitivity"]["top"]]
    costs = [row["cost"] for row in int8["sensitivity"]["top"]]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1] >= 0
    assert set(ranked[:8]) <= set(int8["float_layers"])  # the ranking's top stayed float, and says so
    assert artifact.meta["quantization"]["quantized_layers"] >= 40  # most of the model still runs INT8


def test_openvino_int8_default_keeps_the_detections(tmp_path, photos_root):
    pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgekit[openvino]'")
    pytest.importorskip("nncf", reason="NNCF is not installed: pip install 'edgekit[openvino]'")
    artifact = _build("nudenet-yolov8n", "openvino", "int8", tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    quant = artifact.meta["quantization"]
    assert quant["quantized_layers"] >= 40 and quant["float_layers"] and quant["float_why"]
    assert artifact.meta["openvino"]["convolutions"]["u8"] == quant["quantized_layers"]


def test_openvino_int8_of_yolox_keeps_the_detections_with_its_costliest_quantizers_bypassed(
    tmp_path, photos_root
):
    """mean_minmax with the head alone in float: mean score error 0.057 on the YOLOX; ranked, it passes."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgekit[openvino]'")
    pytest.importorskip("nncf", reason="NNCF is not installed: pip install 'edgekit[openvino]'")
    artifact = _build_yolox("openvino", {"float_ranked": 4}, tmp_path / "a", photos_root)
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    quant = artifact.meta["quantization"]
    assert len(quant["sensitivity"]["bypassed"]) == 4 and "activation quantizers" in quant["float_why"]
    assert quant["quantized_layers"] >= 40  # most of the model still runs INT8


def test_mnn_int8_keeps_the_detections_or_says_why(tmp_path, photos_root, mnn_tools):
    """MNN 3.6.1's INT8 of this model gave different outputs from run to run here (x86); KL 0 % kept.

    Where MNN computes it deterministically, the build must keep the detections; where it does not, the
    build is refused with that reason, names an option, and leaves nothing.
    """
    from edgekit.core.errors import BuildError

    out = tmp_path / "a"
    try:
        artifact = _build("nudenet-yolov8n", "mnn", "int8", out, photos_root)
    except BuildError as exc:
        assert not out.exists()
        assert "different outputs on two runs" in exc.message or "in its detections" in exc.message
        assert "--calib" in exc.hint or "--precision" in exc.hint
        pytest.xfail(reason=f"MNN refused the real YOLOv8n, with its reason: {exc.message[:300]}")
    figures = _agreement(artifact)
    assert figures["kept"] >= MIN_KEPT and figures["score_error"] <= MAX_SCORE_ERROR
    assert artifact.meta["quantization"]["float_layers"]  # the prediction convs stay float


def test_a_refused_int8_build_leaves_nothing_and_names_an_option_build_accepts(tmp_path, photos_root):
    from edgekit.cli import build_parser
    from edgekit.core.errors import BuildError

    out = tmp_path / "a"
    try:
        _build("nudenet-yolov8n", "onnxruntime", "int8", out, photos_root, method="percentile")
    except BuildError as exc:
        assert not out.exists()
        options = {o for a in build_parser()._subparsers._group_actions[0].choices["build"]._actions
                   for o in a.option_strings}  # fmt: skip
        named = {w.strip("(),") for w in exc.hint.split() if w.startswith("--")}
        assert named and named <= options
    else:
        assert (out / "artifact.json").is_file()


def test_agreement_ignores_background_anchors_and_counts_lost_detections():
    from edgekit.backends.contract.agreement import agreement

    ref = np.zeros((1, 6, 50), np.float32)
    ref[0, :4] = 100.0
    ref[0, :4, :3] = np.array([[20, 60, 100], [20, 60, 100], [10, 10, 10], [10, 10, 10]])
    ref[0, 4, :3] = (0.9, 0.8, 0.7)
    noisy = ref.copy()
    noisy[0, :4, 3:] += 150.0  # boxes of anchors no detection uses: huge raw error, no effect
    figures = agreement([ref], [noisy], "yolov8")
    assert figures["kept"] == 1.0 and figures["score_error"] == 0.0
    lost = ref.copy()
    lost[0, 4, 2] = 0.01
    assert agreement([ref], [lost], "yolov8")["kept"] == pytest.approx(2 / 3, abs=1e-3)


def test_a_set_too_small_for_one_method_builds_with_the_method_that_takes_it(
    tmp_path, six_photos_root, ncnn_tools
):
    artifact = build_artifact(
        "ncnn", "int8", real_model("nudenet-yolov8n"), tmp_path / "a", calib="six", calib_root=six_photos_root
    )
    first, chosen = artifact.meta["calibration_search"][0], artifact.meta["calibration_search"][-1]
    assert first["method"] == "kl" and "at least 8 images, got 6" in first["error"]
    assert chosen["method"] == "aciq" and artifact.meta["quantization"]["method"] == "aciq"


def test_a_set_too_small_for_every_method_is_one_error_naming_the_minimum(
    tmp_path, six_photos_root, mnn_tools
):
    from edgekit.core.errors import CalibrationError

    out = tmp_path / "a"
    with pytest.raises(CalibrationError, match="too small for every method of mnn.*at least 8") as info:
        build_artifact(
            "mnn", "int8", real_model("nudenet-yolov8n"), out, calib="six", calib_root=six_photos_root
        )
    assert "--calib" in info.value.hint and not out.exists()
