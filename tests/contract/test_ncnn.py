"""ncnn passes the backend contract (fp32, fp16, its own INT8), plus ncnn-specific checks.

The template's unsupported model (a custom-domain op, which pnnx exits 245 on) is kept: ``_check``
names it before pnnx runs. ncnn's own trap, a strided slice that pnnx leaves as ``Tensor.slice`` and
exits 0 on, is tested below on a detector with a Focus stem.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.backends.ncnn.format import TAG_FP16, TAG_FP32, TAG_INT8, read_param, read_weights, weight_layout
from edgekit.core.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    MissingExtraError,
    UnsupportedOpError,
)
from edgekit.core.files import sha256_file
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, BackendContract, make_tiny_detector_onnx


def _missing_tools() -> str | None:
    if importlib.util.find_spec("ncnn") is None:
        return "the ncnn runtime is not installed: pip install 'edgekit[ncnn]'"
    from edgekit.backends.ncnn.convert import find_pnnx

    try:
        find_pnnx()
    except MissingExtraError:
        return "the pnnx converter is not installed: pip install 'edgekit[ncnn]'"
    return None


def tiny_detector_with_trace(onnx_path: Path, pt_path: Path) -> tuple[Path, Path]:
    """The contract's tiny detector as ONNX and as a TorchScript trace of the very same module."""
    import torch

    from edgekit.backends.ncnn.convert import export_torchscript

    captured = {}
    export = torch.onnx.export

    def capture(model, *args, **kwargs):
        captured["model"] = model
        return export(model, *args, **kwargs)

    with mock.patch.object(torch.onnx, "export", capture):
        make_tiny_detector_onnx(onnx_path)
    return onnx_path, export_torchscript(captured["model"], [1, 3, INPUT_SIZE, INPUT_SIZE], pt_path)


def focus_detector_onnx(path: Path, focus: bool = True) -> Path:
    """YOLOv5's Focus stem (four strided slices) before a conv and a ``[1, N, 5 + nc]`` head.

    With ``focus=False`` the stem is one strided slice (``x[..., ::2, ::2]``), which is no Focus layer.
    """
    import torch

    class FocusDetector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(12 if focus else 3, 5 + NUM_CLASSES, 3, 2, 1)

        def forward(self, x):
            parts = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
            p = self.conv(torch.cat(parts, 1) if focus else parts[0])
            return p.flatten(2).permute(0, 2, 1).sigmoid()

    x = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(FocusDetector().eval(), (x,), str(path), input_names=["images"], dynamo=False)
    return path


def with_nms(src: Path, dst: Path) -> Path:
    """The detector plus an ONNX NonMaxSuppression on its boxes and objectness, as a second output."""
    model = onnx.load(str(src))
    out = model.graph.output[0].name
    ints = [
        helper.make_tensor(n, TensorProto.INT64, [1], [v])
        for n, v in (("s0", 0), ("s4", 4), ("s5", 5), ("ax", 2))
    ]
    model.graph.initializer.extend(ints)
    model.graph.node.extend(
        [
            helper.make_node("Slice", [out, "s0", "s4", "ax"], ["boxes"]),
            helper.make_node("Slice", [out, "s4", "s5", "ax"], ["obj"]),
            helper.make_node("Transpose", ["obj"], ["scores"], perm=[0, 2, 1]),
            helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["keep"], name="nms0"),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("keep", TensorProto.INT64, ["k", 3]))
    onnx.save(model, str(dst))
    return dst


def fp32_bytes(weights: list) -> int:
    """Size of a ``.bin`` holding the same weights in fp32 (int8 scales left out, tags kept)."""
    scales = ("weight_scales", "bottom_scale", "top_scale")
    return sum(
        4 * array.size + 4 * segment.tagged
        for w in weights
        for segment, array in zip(weight_layout(w.layer), w.arrays, strict=True)
        if segment.role not in scales
    )


class TestNcnnContract(BackendContract):
    backend_name = "ncnn"
    precisions = ("fp32", "fp16", "int8")
    # Measured through ncnn_run.py vs ORT fp32 on the 4 held-out images (boxes in pixels of a 32 px
    # input, scores 0..1): fp32 3.8e-6 px / 6e-8 (summation order only); fp16 2.2e-4 px / 6.6e-6
    # (fp16-stored weights; x86 has no fp16 arithmetic, an ARMv8.2 board computes in fp16 and needs
    # more); int8 KL on 16 images, first conv int8 and the head conv float (float_head), 0.45 px /
    # 0.013 (an int8 step of the first conv's output reaches the (2 s)^2 wh decode). Limits: ~2x.
    tolerances = {
        "fp32": {"boxes": 1e-4, "scores": 1e-5},
        "fp16": {"boxes": 2e-3, "scores": 1e-4},
        "int8": {"boxes": 1.0, "scores": 0.03},
    }
    skip_reason = _missing_tools()

    def options(self, precision: str) -> dict:
        opts = super().options(precision)
        if precision == "int8":
            opts["quantizer"] = {"method": "kl"}
        return opts

    def test_artifact_names_blobs_and_runtime_flags(self, artifact, precision):
        meta, runtime = artifact.meta, artifact.meta["runtime"]
        assert meta["files"]["model"] == "model.ncnn.param" and meta["files"]["weights"] == "model.ncnn.bin"
        assert (meta["ncnn"]["input_blob"], meta["ncnn"]["output_blobs"]) == ("in0", ["out0"])
        assert meta["ncnn"]["pnnx_source"] == "onnx" and meta["ncnn"]["layers"] > 2
        assert runtime["threads"] == 1 and runtime["use_int8_inference"] == (precision == "int8")
        assert runtime["use_fp16_storage"] == runtime["use_fp16_arithmetic"] == (precision == "fp16")

    def test_weights_are_stored_in_the_precision(self, artifact, precision):
        layers = read_param(artifact.path("model"))
        weights = read_weights(layers, artifact.path("weights").read_bytes())
        convs = [w for w in weights if w.layer.type == "Convolution"]
        head = artifact.meta["ncnn"]["int8"]["float_layers"] if precision == "int8" else []
        assert head == ([convs[-1].layer.name] if precision == "int8" else [])  # float_head: the last conv
        # (storage tag of the weights, int8_scale_term % 100: 2 = per-channel weight scales); float
        # layers of an int8 model store fp16 weights, as ncnn2int8 writes them
        tag, term = {"fp32": (TAG_FP32, 0), "fp16": (TAG_FP16, 0), "int8": (TAG_INT8, 2)}[precision]
        expected = [(TAG_FP16, 0) if w.layer.name in head else (tag, term) for w in convs]
        assert [(w.storage[0], w.layer.get_int(8) % 100) for w in convs] == expected
        assert artifact.meta["ncnn"]["int8_layers"] == sum(t == 2 for _, t in expected)
        # int8 weights are 1 byte, fp16 2, fp32 4; the int8 model's fp16 head holds 576 of 792 weights
        low, high = {"fp32": (1.0, 1.0), "fp16": (0.45, 0.6), "int8": (0.3, 0.65)}[precision]
        assert low <= artifact.path("weights").stat().st_size / fp32_bytes(weights) <= high

    def test_artifact_records_quantization(self, artifact, precision, calib):
        meta = artifact.meta
        if precision != "int8":
            assert meta["quantization"] is None and meta["calibration"] is None
            assert "table" not in meta["files"]
            return
        quant = meta["quantization"]
        assert (quant["method"], quant["images"], quant["keep_float"], quant["float_head"]) == (
            "kl",
            None,
            [],
            True,
        )
        assert quant["quantized_layers"] == 1 and quant["scales_sha256"] == sha256_file(
            artifact.path("table")
        )
        assert meta["int8_source"] == "calibration" and meta["ncnn"]["int8"]["images"] == calib.count
        assert (meta["calibration"]["name"], meta["calibration"]["sha256"]) == ("contract", calib.sha256)
        assert meta["calibration"]["spec"] == meta["preprocess"]

    def test_without_float_head_every_conv_is_int8(self, backend, fp32_onnx, work, calib, eval_inputs):
        options = dict(self.options("int8"), quantizer={"method": "aciq", "float_head": False})
        art = backend.build(fp32_onnx, options, work / "all_int8", calib=calib)
        layers = read_param(art.path("model"))
        assert [layer.get_int(8) % 100 for layer in layers if layer.type == "Convolution"] == [2, 2]
        assert (
            art.meta["quantization"]["quantized_layers"] == 2
            and art.meta["ncnn"]["int8"]["float_layers"] == []
        )
        assert art.path("weights").stat().st_size < 0.4 * fp32_bytes(
            read_weights(layers, art.path("weights").read_bytes())
        )
        (out,) = backend.infer(art, eval_inputs[:1])
        assert np.isfinite(out).all()

    def test_keep_float_names_are_checked(self, backend, fp32_onnx, work, calib):
        options = dict(self.options("int8"), quantizer={"method": "kl", "keep_float": ["nope"]})
        with pytest.raises(ConfigError, match="keep_float names no quantizable layer of the model: nope"):
            backend.build(fp32_onnx, options, work / "out_keep", calib=calib)
        assert not (work / "out_keep").exists()

    def test_int8_flag_left_off_fails_the_load_check(self, backend, artifact, precision):
        meta = {**artifact.meta, "runtime": {**artifact.meta["runtime"], "use_int8_inference": False}}
        edited = dataclasses.replace(artifact, meta=meta)
        if precision == "int8":
            with pytest.raises(BuildError, match="NaN"):
                backend.load_check(edited)
        else:
            backend.load_check(edited)  # a float model needs no int8 flag

    def test_torchscript_and_onnx_paths_agree(self, backend, work, eval_inputs):
        onnx_path, pt = tiny_detector_with_trace(work / "traced.onnx", work / "traced.pt")
        options = self.options("fp32")
        from_onnx = backend.build(onnx_path, options, work / "from_onnx")
        from_ts = backend.build(onnx_path, options, work / "from_ts", torch_program=pt)
        assert (from_onnx.meta["ncnn"]["pnnx_source"], from_ts.meta["ncnn"]["pnnx_source"]) == (
            "onnx",
            "torchscript",
        )
        for x in eval_inputs:
            (a,), (b,) = backend.infer(from_onnx, x[None]), backend.infer(from_ts, x[None])
            assert a.shape == b.shape == (1, (INPUT_SIZE // 4) ** 2, 5 + NUM_CLASSES)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)  # both fp32; pixels up to ~60

    def test_int8_without_calibration_is_refused(self, backend, fp32_onnx, work):
        out = work / "out_no_calib"
        with pytest.raises(CalibrationError, match="calibration set") as info:
            backend.build(fp32_onnx, self.options("int8"), out)
        assert "--calib" in info.value.hint and not out.exists()

    @pytest.mark.parametrize(
        ("quantizer", "match"), [({"method": "kl", "images": 4}, "at least 8"), ({"images": 99}, "has 16")]
    )
    def test_too_few_calibration_images_are_refused(self, backend, fp32_onnx, work, calib, quantizer, match):
        out = work / "out_few"
        options = dict(self.options("int8"), quantizer=quantizer)
        with pytest.raises(CalibrationError, match=match):
            backend.build(fp32_onnx, options, out, calib=calib)
        assert not out.exists()

    def test_quantizer_options_are_typed(self, backend):
        with pytest.raises(ConfigError, match="method"):
            backend.validate_options({"precision": "int8", "quantizer": {"method": "minmax"}})
        with pytest.raises(ConfigError, match="quantizer"):
            backend.validate_options({"precision": "int8", "quantizer": {"method": "kl", "bogus": 1}})
        assert backend.quantizer_options().method == backend.methods[0]

    def test_a_focus_stem_is_built_as_one_convolution(self, backend, work):
        src = focus_detector_onnx(work / "focus.onnx")
        assert [p for p in backend.check(src, self.options("fp32")) if p.severity == "error"] == []
        artifact = backend.build(src, self.options("fp32"), work / "out_focus", reference=src)
        assert artifact.meta["ncnn"]["focus_as_conv"]
        assert artifact.meta["parity"]["outputs"][0]["cosine"] >= 0.9999  # the rewrite is exact in float

    def test_strided_slice_is_named_before_pnnx_runs(self, backend, work):
        src = focus_detector_onnx(work / "strided.onnx", focus=False)
        out = work / "out_strided"
        with pytest.raises(UnsupportedOpError, match="Tensor.slice") as info:
            backend.build(src, self.options("fp32"), out)
        assert info.value.ops == ["Tensor.slice"] and "Focus" in info.value.hint
        assert not out.exists()
        (problem,) = [p for p in backend.check(src, self.options("fp32")) if p.severity == "error"]
        assert "Slice node(s)" in problem.message and "steps" in problem.message

    def test_nms_in_the_graph_is_named(self, backend, fp32_onnx, work):
        src = with_nms(fp32_onnx, work / "nms.onnx")
        problems = backend.check(src, self.options("fp32"))
        assert [p.ops for p in problems if p.severity == "error"] == [("NonMaxSuppression",)]
        assert "'nms0'" in problems[0].message and "NMS" in problems[0].hint
