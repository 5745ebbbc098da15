"""edgekit's ncnn INT8 (ncnn2table + ncnn2int8 in Python): structure, numbers vs fp32, bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgekit.backends.ncnn.calibration import (
    Int8Table,
    aciq_clip,
    find_ncnn2table,
    kl_threshold_bin,
    run_ncnn2table,
    weight_scales,
)
from edgekit.backends.ncnn.convert import load_net, run_ncnn
from edgekit.backends.ncnn.format import (
    TAG_FP16,
    TAG_INT8,
    LayerWeights,
    parse_param,
    read_param,
    read_weights,
)
from edgekit.backends.ncnn.int8 import build_int8, quantize_ncnn, read_table
from edgekit.core.errors import BuildError, CalibrationError, ConfigError

METHODS = ("kl", "aciq")
# Tolerances vs the fp32 ncnn model on 8 held-out images (outputs span ~0.49 peak to peak).
# Measured on x86: KL maxabs 0.0041 / cos 0.999994, ACIQ maxabs 0.0022 / cos 0.999995.
# One int8 step is threshold/127 per layer; six quantized layers in a row can stack a few steps,
# about 2-3 % of the range in the worst case, so maxabs <= 0.02 (~4 %) allows ARM kernels that
# round differently while still failing for a wrong scale (x8 activation scales gave 0.16 / cos 0.94).
MAX_ABS = 0.02
MIN_COSINE = 0.999


def _errors(fp32_model, result, images) -> tuple[float, float]:
    max_abs, min_cos = 0.0, 1.0
    for x in images:
        (ref,) = run_ncnn(fp32_model.param, fp32_model.bin, x, int8=False, fp16=False)
        (out,) = run_ncnn(result.param, result.bin, x, int8=True, fp16=False)
        max_abs = max(max_abs, float(np.abs(ref - out).max()))
        min_cos = min(min_cos, float(ref.ravel() @ out.ravel() / np.linalg.norm(ref) / np.linalg.norm(out)))
    return max_abs, min_cos


@pytest.mark.parametrize("method", METHODS)
def test_int8_model_carries_int8_and_loads(int8_results, fp32_model, method):
    result = int8_results[method]
    layers = read_param(result.param)
    convs = [layer for layer in layers if layer.type in ("Convolution", "ConvolutionDepthWise")]
    assert len(convs) == result.quantized_layers == 8
    for layer in convs:  # depthwise: per-group weight scales (1); others per-channel (2); +100 requantize
        assert layer.get_int(8) % 100 == (1 if layer.type == "ConvolutionDepthWise" else 2), layer.name
    weights = read_weights(layers, result.bin.read_bytes())
    assert all(w.storage[0] == TAG_INT8 for w in weights if w.layer in convs)
    assert result.bin.stat().st_size < 0.35 * fp32_model.bin.stat().st_size  # int8 + fp32 bias/scales
    load_net(result.param, result.bin, int8=True)  # the ncnn wheel accepts it with use_int8_inference
    assert result.warnings == []


@pytest.mark.parametrize("method", METHODS)
def test_int8_outputs_match_fp32_within_tolerance(int8_results, fp32_model, eval_images, method):
    max_abs, min_cos = _errors(fp32_model, int8_results[method], eval_images)
    assert min_cos >= MIN_COSINE and max_abs <= MAX_ABS, (max_abs, min_cos)
    assert max_abs > 1e-4  # int8 really ran: the fp32 model run twice differs by exactly 0
    assert int8_results[method].cosine >= MIN_COSINE


def test_running_int8_without_int8_inference_is_refused(int8_results, eval_images):
    result = int8_results["kl"]
    with pytest.raises(ConfigError, match="NaN"):  # the wheel would silently return NaN
        run_ncnn(result.param, result.bin, eval_images[0], int8=False, fp16=False)


def test_requantize_fusion_matches_unfused(int8_results, fp32_model, eval_images, tmp_path):
    fused = int8_results["kl"]
    terms = {layer.name: layer.get_int(8) for layer in read_param(fused.param)}
    assert terms["convrelu_0"] == 102 and terms["convrelu_1"] == 102  # conv -> conv feeds int8 directly
    assert terms["conv_5"] == 2  # its output goes to a Reshape, so it dequantizes
    unfused = tmp_path / "u.param", tmp_path / "u.bin"
    quantize_ncnn(fp32_model.param, fp32_model.bin, fused.table, *unfused, fuse_requantize=False)
    assert all(layer.get_int(8) < 100 for layer in read_param(tmp_path / "u.param"))
    x = eval_images[0]
    (a,) = run_ncnn(fused.param, fused.bin, x, int8=True, fp16=False)
    (b,) = run_ncnn(tmp_path / "u.param", tmp_path / "u.bin", x, int8=True, fp16=False)
    np.testing.assert_allclose(a, b, atol=1e-4)  # requantize = dequantize + quantize, same rounding


def test_kl_and_aciq_scales_differ(int8_results):
    kl, aciq = (int8_results[m].activation_scales for m in METHODS)
    assert kl.keys() == aciq.keys()
    differing = [name for name in kl if abs(kl[name] - aciq[name]) > 0.01 * kl[name]]
    assert len(differing) >= len(kl) // 2, (kl, aciq)
    # ACIQ clips weights too: below ~8000 inputs per channel its clip exceeds max|w| (smaller scales)
    for name in kl:
        kl_w, aciq_w = (int8_results[m].weight_scales[name] for m in METHODS)
        assert (aciq_w < kl_w).all(), name


def test_table_round_trips(int8_results, tmp_path):
    result = int8_results["aciq"]
    table = read_table(result.table)
    assert table.activation_scales.keys() == result.activation_scales.keys()
    for name, scale in result.activation_scales.items():
        assert table.activation_scales[name][0] == np.float32(scale)
        np.testing.assert_array_equal(table.weight_scales[name], result.weight_scales[name])
    first = result.table.read_text().splitlines()[0]
    assert first.startswith("conv_0_param_0 ") and first.endswith(" ")  # ncnn2table's row shape
    table.write_table(tmp_path / "again.table")
    assert (tmp_path / "again.table").read_text() == result.table.read_text()


def test_reads_ncnn2table_output(tmp_path):
    path = tmp_path / "ncnn.table"
    path.write_text("conv_0_param_0 9.000000 12.500000 \nmha_0_param_1 2.000000 \n\nconv_0 127.031013 \n")
    table = read_table(path)
    np.testing.assert_array_equal(table.weight_scales["conv_0"], [9.0, 12.5])
    assert table.activation_scales["conv_0"][0] == np.float32(127.031013)
    assert list(table.other) == ["mha_0_param_1"]


def test_empty_calibration_raises_and_writes_nothing(fp32_model, tmp_path):
    with pytest.raises(CalibrationError, match="empty"):
        build_int8(fp32_model.param, fp32_model.bin, lambda: [], "kl", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_kl_needs_more_images_than_aciq(fp32_model, calib_images, tmp_path):
    with pytest.raises(CalibrationError, match="at least 8 images, got 3"):
        build_int8(fp32_model.param, fp32_model.bin, lambda: calib_images[:3], "kl", tmp_path / "kl")
    result = build_int8(fp32_model.param, fp32_model.bin, lambda: calib_images[:3], "aciq", tmp_path / "aciq")
    assert result.images == 3 and result.quantized_layers == 8


def test_never_activated_layer_names_the_layer(fp32_model, tmp_path):
    zeros = [np.zeros((1, 3, 64, 64), np.float32)] * 2
    with pytest.raises(CalibrationError) as caught:
        build_int8(fp32_model.param, fp32_model.bin, lambda: zeros, "aciq", tmp_path / "out")
    assert "'conv_0'" in caught.value.message and "inf or NaN" in caught.value.message
    assert "skip_layers" in caught.value.hint


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((1, 3, 64, 64), np.uint8), "not float"),
        (np.full((1, 3, 64, 64), np.nan, np.float32), "inf or NaN"),
        (np.zeros((3, 64, 64), np.float32), "shape"),
        (np.zeros((1, 1, 64, 64), np.float32), "1 channels, the model takes 3"),  # ncnn would not notice
    ],
)
def test_bad_calibration_images(fp32_model, tmp_path, image, match):
    with pytest.raises(CalibrationError, match=match):
        build_int8(fp32_model.param, fp32_model.bin, lambda: [image], "aciq", tmp_path / "out")


def test_layers_without_table_entry_stay_float(int8_results, fp32_model, eval_images, tmp_path):
    table = read_table(int8_results["kl"].table)
    del table.activation_scales["conv_6"]
    done = quantize_ncnn(fp32_model.param, fp32_model.bin, table, tmp_path / "p.param", tmp_path / "p.bin")
    assert "conv_6" not in done and len(done) == 7
    layers = read_param(tmp_path / "p.param")
    kept = next(
        w for w in read_weights(layers, (tmp_path / "p.bin").read_bytes()) if w.layer.name == "conv_6"
    )
    assert kept.layer.get_int(8) == 0 and kept.storage[0] == TAG_FP16  # float, as fp16 like ncnn2int8
    (out,) = run_ncnn(tmp_path / "p.param", tmp_path / "p.bin", eval_images[0], int8=True, fp16=False)
    (ref,) = run_ncnn(fp32_model.param, fp32_model.bin, eval_images[0], int8=False, fp16=False)
    assert np.abs(out - ref).max() <= MAX_ABS


def _conv(params: str, weight: np.ndarray) -> LayerWeights:
    (layer,) = parse_param(f"7767517\n1 2\n{params}\n")
    return LayerWeights(layer, [weight.astype(np.float32).ravel()], [0])


def test_weight_scales_follow_ncnn2table():
    w = np.array([[0.5, -0.25], [0.0, 0.0], [-2.0, 1.0]])  # 3 output channels of a 1x1 conv, 2 inputs
    scales = weight_scales(_conv("Convolution c 1 1 a b 0=3 1=1 6=6", w), "kl")
    np.testing.assert_allclose(scales, [127 / 0.5, 1.0, 127 / 2.0])  # all-zero channel -> 1, not inf
    w3 = np.ones((2, 1, 3, 3))
    winograd = weight_scales(_conv("Convolution c 1 1 a b 0=2 1=3 6=18", w3), "kl")
    np.testing.assert_allclose(winograd, [31.0, 31.0])  # 3x3 stride 1: 6-bit for int8 Winograd F(4,3)
    strided = weight_scales(_conv("Convolution c 1 1 a b 0=2 1=3 3=2 6=18", w3), "kl")
    np.testing.assert_allclose(strided, [127.0, 127.0])
    dw = weight_scales(
        _conv("ConvolutionDepthWise d 1 1 a b 0=2 1=3 6=18 7=2", w3 * [[[[1]]], [[[4]]]]), "kl"
    )
    np.testing.assert_allclose(dw, [127.0, 127 / 4])  # one scale per group
    wide = weight_scales(_conv("Convolution c 1 1 a b 0=1 1=1 6=16384", np.ones((1, 16384))), "aciq")
    assert wide[0] == pytest.approx(127 / aciq_clip(1.0, 16384)) and wide[0] > 127  # clipped below max
    narrow = weight_scales(_conv("Convolution c 1 1 a b 0=1 1=1 6=9", np.ones((1, 9))), "aciq")
    assert narrow[0] < 127  # few values: ncnn's Gaussian estimate puts the clip above max|w|


def test_kl_threshold_clips_outliers_but_not_a_uniform_spread():
    uniform = np.full(2048, 100, np.int64)
    assert kl_threshold_bin(uniform) >= 2040  # nothing to gain by clipping
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [40.0]]))  # one far outlier sets the max
    histogram = np.bincount(np.minimum((values / values.max() * 2048).astype(int), 2047), minlength=2048)
    assert 128 <= kl_threshold_bin(histogram) < 400  # the clip lands near the bulk (~4 sigma), not at 40


NO_NCNN2TABLE = "ncnn2table is not on PATH: it ships in neither the ncnn wheel nor Debian bookworm"


def test_table_matches_ncnn2table_when_available(fp32_model, calib_images, int8_results, tmp_path):
    if find_ncnn2table() is None:
        pytest.skip(reason=NO_NCNN2TABLE)
    theirs = run_ncnn2table(fp32_model.param, fp32_model.bin, lambda: calib_images, "kl", tmp_path)
    ours = read_table(int8_results["kl"].table)
    for name, scale in ours.activation_scales.items():
        assert theirs.activation_scales[name][0] == pytest.approx(scale[0], rel=0.02)  # float32 vs float64 KL
        np.testing.assert_allclose(theirs.weight_scales[name], ours.weight_scales[name], rtol=1e-4)


def test_unknown_method_is_a_config_error(fp32_model, calib_images, tmp_path):
    with pytest.raises(ConfigError, match="minmax"):
        build_int8(fp32_model.param, fp32_model.bin, lambda: calib_images, "minmax", tmp_path)


def test_int8_layer_is_byte_exact_and_read_as_written_by_ncnn(ncnn_tools, tmp_path):
    # 1x1 conv, 4 inputs -> 1 output; weight scale 2 gives w*s = [2, 1, -0.5, 0.252]
    (tmp_path / "m.param").write_text(
        "7767517\n2 2\nInput in0 0 1 in0\nConvolution conv 1 1 in0 out0 0=1 1=1 5=1 6=4\n"
    )
    weights = struct.pack("<I4f", 0, 1.0, 0.5, -0.25, 0.126) + struct.pack("<f", 0.1)
    (tmp_path / "m.bin").write_bytes(weights)
    table = Int8Table({"conv": np.array([2.0], np.float32)}, {"conv": np.array([100.0], np.float32)})
    quantize_ncnn(tmp_path / "m.param", tmp_path / "m.bin", table, tmp_path / "q.param", tmp_path / "q.bin")
    # tag, int8 weights (round half away from zero: -0.5 -> -1), bias, weight scales, input scale
    expected = struct.pack("<I4b3f", TAG_INT8, 2, 1, -1, 0, 0.1, 2.0, 100.0)
    assert (tmp_path / "q.bin").read_bytes() == expected
    assert read_param(tmp_path / "q.param")[1].params[8] == "2"
    x = np.array([0.5, 1.0, -1.0, 0.25], np.float32).reshape(1, 4, 1, 1)
    (out,) = run_ncnn(tmp_path / "q.param", tmp_path / "q.bin", x, int8=True, fp16=False)
    # ncnn: input quantized to [50, 100, -100, 25]; (2*50 + 100 + 100 + 0) / (100 * 2) + 0.1 = 1.6
    assert out.ravel()[0] == pytest.approx(1.6, abs=1e-6)


def test_skip_layers_keeps_them_float_and_rejects_unknown_names(fp32_model, calib_images, tmp_path):
    result = build_int8(
        fp32_model.param, fp32_model.bin, lambda: calib_images, "aciq", tmp_path, skip_layers={"conv_6"}
    )
    assert result.quantized_layers == 7 and "conv_6" not in result.activation_scales
    assert next(x for x in read_param(result.param) if x.name == "conv_6").get_int(8) == 0
    assert any("conv_6" in note for note in result.warnings)
    with pytest.raises(ConfigError, match="nope"):
        build_int8(
            fp32_model.param, fp32_model.bin, lambda: calib_images, "aciq", tmp_path, skip_layers={"nope"}
        )


def test_quantizing_an_int8_model_again_is_refused(int8_results, tmp_path):
    result = int8_results["kl"]
    with pytest.raises(BuildError, match="already int8"):
        quantize_ncnn(result.param, result.bin, result.table, tmp_path / "x.param", tmp_path / "x.bin")
    with pytest.raises(BuildError, match="already int8"):
        build_int8(result.param, result.bin, lambda: [], "kl", tmp_path / "again")
