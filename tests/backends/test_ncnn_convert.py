"""pnnx conversion and its post-checks, the ncnn param/bin format, and running models in the wheel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.backends.ncnn.convert import (
    check_layer_types,
    check_loads,
    convert_with_pnnx,
    export_torchscript,
    run_ncnn,
)
from edgekit.backends.ncnn.format import (
    TAG_FP16,
    TAG_FP32,
    format_param,
    parse_param,
    read_weights,
    weight_layout,
)
from edgekit.core.errors import BuildError, DataError, ModelError, UnsupportedOpError
from tests.backends.ncnn_models import SIZE, StridedSlice

SHAPE = [1, 3, SIZE, SIZE]


def _torch_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_conversion_matches_torch(fp32_model, detector, eval_images):
    assert (fp32_model.inputs, fp32_model.outputs) == (["in0"], ["out0"])
    types = {layer.type for layer in fp32_model.layers}
    assert {"Convolution", "ConvolutionDepthWise", "Interp", "Concat"} <= types
    assert fp32_model.log.is_file() and "pass_ncnn" in fp32_model.log.read_text()
    for x in eval_images[:2]:
        (out,) = run_ncnn(fp32_model.param, fp32_model.bin, x, int8=False, fp16=False)
        reference = _torch_out(detector, x)
        assert out.shape == reference.shape == (1, 7, 320)  # batch dim restored
        # fp32 everywhere; only summation order differs from torch
        np.testing.assert_allclose(out, reference, atol=1e-5)


def test_fp16_conversion_stores_half_weights(ncnn_tools, detector_pt, fp32_model, eval_images, tmp_path):
    fp16 = convert_with_pnnx(detector_pt, SHAPE, tmp_path, fp16=True)
    tags = {
        tag for w in read_weights(fp16.layers, fp16.bin.read_bytes()) for tag in w.storage if tag is not None
    }
    assert tags == {TAG_FP16}
    assert fp16.bin.stat().st_size < 0.6 * fp32_model.bin.stat().st_size
    x = eval_images[0]
    (half,) = run_ncnn(fp16.param, fp16.bin, x, int8=False, fp16=True)
    (full,) = run_ncnn(fp32_model.param, fp32_model.bin, x, int8=False, fp16=False)
    # fp16 weights carry ~3 significant digits; outputs here are within +-0.3
    np.testing.assert_allclose(half, full, atol=5e-3)


def test_onnx_source_converts(ncnn_tools, detector, eval_images, tmp_path):
    onnx_path = tmp_path / "det.onnx"
    torch.onnx.export(detector, torch.zeros(SHAPE), str(onnx_path), opset_version=13, dynamo=False)
    model = convert_with_pnnx(onnx_path, SHAPE, tmp_path / "ncnn", fp16=False)
    (out,) = run_ncnn(model.param, model.bin, eval_images[0], int8=False, fp16=False)
    np.testing.assert_allclose(out, _torch_out(detector, eval_images[0]), atol=1e-5)


def test_strided_slice_is_unsupported_and_named(ncnn_tools, tmp_path):
    source = export_torchscript(StridedSlice(), SHAPE, tmp_path / "focus.pt")
    with pytest.raises(UnsupportedOpError) as caught:
        convert_with_pnnx(source, SHAPE, tmp_path / "out", fp16=False)
    err = caught.value
    assert err.backend == "ncnn" and err.ops == ["Tensor.slice"]
    assert "'Tensor.slice_" in str(err)  # the layer name, not only the op type
    assert "Focus" in err.hint
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pnnx.log"]  # no model left behind


def test_unregistered_layer_is_reported_by_the_loader(ncnn_tools, tmp_path):
    param = tmp_path / "m.param"
    param.write_text("7767517\n2 2\nInput in0 0 1 in0\nFancyOp fancy_0 1 1 in0 out0\n")
    (tmp_path / "m.bin").write_bytes(b"")
    with pytest.raises(UnsupportedOpError) as caught:
        check_loads(param, tmp_path / "m.bin")
    assert caught.value.ops == ["FancyOp"] and "'fancy_0'" in caught.value.hint


def test_pnnx_failure_is_a_build_error_with_the_log_tail(ncnn_tools, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(BuildError) as caught:
        convert_with_pnnx(junk, SHAPE, tmp_path / "out", fp16=False)
    assert "wrote no ncnn model" in caught.value.message
    assert "last lines of the pnnx log" in caught.value.hint


def test_bad_sources_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        convert_with_pnnx(tmp_path / "missing.pt", SHAPE, tmp_path, fp16=False)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ModelError, match="not model.tflite"):
        convert_with_pnnx(tmp_path / "model.tflite", SHAPE, tmp_path, fp16=False)


def test_run_ncnn_takes_one_image_with_the_right_channels(fp32_model):
    with pytest.raises(DataError, match="takes 3 input channels, the input has 4"):
        run_ncnn(
            fp32_model.param, fp32_model.bin, np.zeros((1, 4, SIZE, SIZE), np.float32), int8=False, fp16=False
        )
    with pytest.raises(DataError, match="one"):
        run_ncnn(
            fp32_model.param, fp32_model.bin, np.zeros((2, 3, SIZE, SIZE), np.float32), int8=False, fp16=False
        )


def test_param_round_trips_and_rejects_damage(fp32_model):
    text = fp32_model.param.read_text()
    layers = parse_param(text)
    assert parse_param(format_param(layers)) == layers
    conv = next(layer for layer in layers if layer.type == "Convolution")
    assert conv.get_int(0) == 8 and conv.with_param(8, 2).to_line().endswith(" 8=2")
    with pytest.raises(ModelError, match="magic"):
        parse_param(text.replace("7767517", "7767518", 1))
    with pytest.raises(ModelError, match="declares"):
        parse_param(text.rsplit("\n", 2)[0])  # last layer cut off


def test_check_layer_types_names_every_leftover():
    layers = parse_param(
        "7767517\n3 3\nInput in0 0 1 in0\npnnx.Expression expr_0 1 1 in0 a\nTensor.slice s_1 1 1 a out0\n"
    )
    with pytest.raises(UnsupportedOpError) as caught:
        check_layer_types(layers)
    assert caught.value.ops == ["Tensor.slice", "pnnx.Expression"]
    assert "'expr_0'" in caught.value.hint and "'s_1'" in caught.value.hint


def test_bin_layout_accounts_for_every_byte(fp32_model, tmp_path):
    data = fp32_model.bin.read_bytes()
    weights = read_weights(fp32_model.layers, data)
    conv = next(w for w in weights if w.layer.name == "conv_0")
    assert [s.role for s in weight_layout(conv.layer)] == ["weight", "bias"]
    assert conv.storage == [TAG_FP32, None] and conv.get("weight").shape == (8 * 3 * 3 * 3,)
    with pytest.raises(ModelError, match="4 bytes more"):
        read_weights(fp32_model.layers, data + b"\0" * 4)
    with pytest.raises(ModelError, match="shorter"):
        read_weights(fp32_model.layers, data[:-4])


def test_unknown_weighted_layer_is_refused():
    (layer,) = parse_param("7767517\n1 1\nLSTM lstm_0 1 1 in0 out0 0=8 1=64\n")
    with pytest.raises(ModelError, match="LSTM"):
        weight_layout(layer)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("InnerProduct fc 1 1 a b 0=10 1=1 2=40", [("weight", 40, True), ("bias", 10, False)]),
        (
            "InnerProduct fc 1 1 a b 0=10 1=1 2=40 8=2",
            [
                ("weight", 40, True),
                ("bias", 10, False),
                ("weight_scales", 10, False),
                ("bottom_scale", 1, False),
            ],
        ),
        (
            "ConvolutionDepthWise dw 1 1 a b 0=16 1=3 6=144 7=16 8=101",  # per-group scales, requantized
            [
                ("weight", 144, True),
                ("weight_scales", 16, False),
                ("bottom_scale", 1, False),
                ("top_scale", 1, False),
            ],
        ),
        ("Convolution c 1 1 a b 0=4 1=3 5=1 6=36 19=1", []),  # dynamic weight: read from a blob
        ("BatchNorm bn 1 1 a b 0=8", [(role, 8, False) for role in ("slope", "mean", "var", "bias")]),
        ("Swish s 1 1 a b", []),
    ],
)
def test_weight_layout_follows_ncnn_load_model(line, expected):
    (layer,) = parse_param(f"7767517\n1 2\n{line}\n")
    assert [(s.role, s.count, s.tagged) for s in weight_layout(layer)] == expected


def test_relative_work_folder_converts(ncnn_tools, detector_pt, tmp_path, monkeypatch):
    """pnnx runs in its own folder: a relative work folder (deploy's default runs/) must still convert."""
    monkeypatch.chdir(tmp_path)
    model = convert_with_pnnx(detector_pt, SHAPE, "runs/x/.artifact.tmp", fp16=False)
    assert model.param.is_file() and model.param.is_absolute()
