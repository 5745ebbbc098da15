import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.backends.tensorrt.cache import read_trt_cache
from edgekit.calib import CalibrationSet, import_set
from edgekit.core.errors import ConfigError, ModelError
from edgekit.data.preprocess import PreprocessSpec, letterbox, load_image
from tests.calib.conftest import SPEC, tiny_conv_onnx

# A non-trivial spec: ImageNet-style mean/std, BGR, so a swapped or unscaled value shows up.
ODD_SPEC = PreprocessSpec(
    input_size=64, mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229), channel_order="BGR"
)


@pytest.fixture
def calib(image_folder: Path, tmp_path: Path) -> CalibrationSet:
    return import_set(image_folder, "s", root=tmp_path / "calibration", spec=SPEC).set


@pytest.fixture
def odd(image_folder: Path, tmp_path: Path) -> CalibrationSet:
    return import_set(image_folder, "odd", root=tmp_path / "calibration", spec=ODD_SPEC).set


def _sidecar(out: Path) -> dict:
    return json.loads((out / "calibration.json").read_text())


def test_onnxruntime_export(calib: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "ort"
    files = calib.export("onnxruntime", out, input_name="input0")
    arr = np.load(out / "inputs.npy")
    assert arr.shape == (24, 3, 64, 64) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, np.concatenate(list(calib.arrays())))
    reader = json.loads((out / "reader.json").read_text())
    assert reader["input_name"] == "input0" and reader["count"] == 24 and reader["set"] == calib.ref()
    assert _sidecar(out)["set"] == calib.ref() and _sidecar(out)["spec"]["input_size"] == 64
    assert out.resolve() / "inputs.npy" in files and len(list((out / "images").iterdir())) == 24


def test_canvases_are_letterboxed_inputs(calib: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "mnn"
    calib.export("mnn", out, limit=3)
    pngs = sorted((out / "images").iterdir())
    assert len(pngs) == 3
    for png, src in zip(pngs, calib.image_paths(3), strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), letterbox(load_image(src), calib.spec)[0])


def test_mnn_config_values(odd: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "mnn"
    odd.export("mnn", out)
    cfg = json.loads((out / "mnn_quant.json").read_text())
    np.testing.assert_allclose(cfg["mean"], [103.53, 116.28, 123.675], rtol=1e-12)
    np.testing.assert_allclose(cfg["normal"], [1 / 57.375, 1 / 57.12, 1 / 58.395], rtol=1e-12)
    assert cfg["format"] == "BGR" and (cfg["width"], cfg["height"]) == (64, 64)
    assert cfg["used_image_num"] == 24 and cfg["feature_quantize_method"] == "EMA"
    assert cfg["weight_quantize_method"] == "MAX_ABS"
    assert Path(cfg["path"]) == (out / "images").resolve()
    # MNN's (src - mean) * normal on 0..255 BGR pixels reproduces edgekit's tensor exactly (float64)
    canvas = np.asarray(Image.open(sorted((out / "images").iterdir())[0]), np.float64)[..., ::-1]
    mnn = (canvas - np.asarray(cfg["mean"])) * np.asarray(cfg["normal"])
    np.testing.assert_allclose(mnn.transpose(2, 0, 1)[None], next(iter(odd.arrays())), atol=2e-5)


def test_mnn_refuses_admm(calib: CalibrationSet, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ADMM .* refused") as info:
        calib.export("mnn", tmp_path / "m", feature_method="ADMM")
    assert "EMA" in info.value.hint
    assert not (tmp_path / "m").exists()
    calib.export("mnn", tmp_path / "kl", feature_method="kl")
    assert json.loads((tmp_path / "kl" / "mnn_quant.json").read_text())["feature_quantize_method"] == "KL"


def test_ncnn_args_and_list(odd: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "ncnn"
    odd.export("ncnn", out)
    args = (out / "ncnn2table.args").read_text().strip()
    fields = dict(part.split("=", 1) for part in args.split())
    assert fields["mean"] == "[103.53,116.28,123.675]"
    norm = [float(v) for v in fields["norm"].strip("[]").split(",")]
    np.testing.assert_allclose(norm, [1 / 57.375, 1 / 57.12, 1 / 58.395], rtol=1e-8)
    assert [fields[k] for k in ("shape", "pixel", "thread", "method")] == ["[64,64,3]", "BGR", "2", "kl"]
    listed = (out / "imagelist.txt").read_text().splitlines()
    assert len(listed) == 24 and all(Path(p).is_file() and Path(p).is_absolute() for p in listed)
    with pytest.raises(ConfigError, match="method=eq segfaults"):
        odd.export("ncnn", tmp_path / "eq", method="eq")


def test_tflite_representative_nhwc(odd: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "tfl"
    odd.export("tflite", out)
    data = np.load(out / "representative.npz")["inputs"]
    assert data.shape == (24, 64, 64, 3) and data.dtype == np.float32
    nchw = np.concatenate(list(odd.arrays()))
    np.testing.assert_array_equal(data, nchw.transpose(0, 2, 3, 1))
    spec = importlib.util.spec_from_file_location("representative", out / "representative.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    samples = list(mod.representative_dataset())
    assert len(samples) == 24 and all(len(s) == 1 and s[0].shape == (1, 64, 64, 3) for s in samples)
    np.testing.assert_array_equal(samples[5][0][0], data[5])
    # onnx2tf -cind data: raw 0..1 pixels; normalising with the recorded mean/std gives the same tensors
    raw = np.load(out / "cind_nhwc.npy")
    cind = _sidecar(out)["onnx2tf_cind"]
    np.testing.assert_allclose((raw - np.asarray(cind["mean"])) / np.asarray(cind["std"]), data, atol=1e-5)


def test_tensorrt_cache_scales_match_independent_ranges(calib: CalibrationSet, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    fp32 = tiny_conv_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "trt"
    calib.export("tensorrt", out, onnx=fp32)
    header, scales = read_trt_cache(out / "calibration.cache")
    assert header == "TRT-8502-MinMaxCalibration"  # the header names the calibrator that made the scales
    assert {"images", "conv1_out", "relu_out", "out"} <= set(scales)

    # Independent ranges: expose the intermediate output and take max |x| over the set's arrays.
    model = onnx.load(str(fp32))
    model.graph.output.append(onnx.helper.make_tensor_value_info("conv1_out", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString())
    arrays = list(calib.arrays())
    amax_conv = max(float(np.abs(sess.run(["conv1_out"], {"images": a})[0]).max()) for a in arrays)
    amax_in = max(float(np.abs(a).max()) for a in arrays)
    assert scales["conv1_out"] == float(np.float32(amax_conv) / np.float32(127))
    assert scales["images"] == float(np.float32(amax_in) / np.float32(127))
    ranges = json.loads((out / "ranges.json").read_text())
    assert ranges["conv1_out"]["scale"] == scales["conv1_out"]


def test_tensorrt_needs_an_existing_onnx(calib: CalibrationSet, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the fp32 ONNX model"):
        calib.export("tensorrt", tmp_path / "a")
    with pytest.raises(ModelError, match="ONNX model not found"):
        calib.export("tensorrt", tmp_path / "b", onnx=tmp_path / "missing.onnx")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unknown_format_and_option(calib: CalibrationSet, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown calibration export format 'openvino'") as info:
        calib.export("openvino", tmp_path / "x")
    assert all(name in info.value.hint for name in ("onnxruntime", "mnn", "ncnn", "tensorrt", "tflite"))
    with pytest.raises(ConfigError, match="unknown option.*for the ncnn export: threads"):
        calib.export("ncnn", tmp_path / "x", threads=4)


def test_export_refuses_existing_folder_unless_overwrite(calib: CalibrationSet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    calib.export("onnxruntime", out, limit=2)
    with pytest.raises(Exception, match="already exists"):
        calib.export("onnxruntime", out, limit=2)
    calib.export("onnxruntime", out, limit=3, overwrite=True)
    assert np.load(out / "inputs.npy").shape[0] == 3
