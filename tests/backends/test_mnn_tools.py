"""MNN tool wrappers on a tiny detector: conversion, int8 quantization, error paths, no pip and no network.

Accuracy is measured against ONNX Runtime fp32 on 8 inputs (2 calibration canvases, 4 held-out synthetic
images, 2 uniform-noise images). Output values of the test model lie in about [-0.2, 0.3]. Measured on
x86 with MNN 3.6.1 (see the constants): tolerances are about 3x the measured figure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.core.errors import BuildError, CalibrationError, ConfigError, UnsupportedOpError

if importlib.util.find_spec("_tools") is None or importlib.util.find_spec("MNN") is None:
    pytest.skip(reason="needs the mnn extra (pip install 'edgekit[mnn]')", allow_module_level=True)

from edgekit.backends.mnn import tools as mt  # noqa: E402

SIZE = 64
N_CALIB = 32
# measured maxabs / cos_min vs ORT fp32 -> asserted bound
FP32_MAXABS = 1e-4  # measured 9e-8
FP16_MAXABS = 1e-3  # measured 3.7e-5
INT8_COS_MIN = 0.99  # measured KL 0.99999, EMA 0.99986
KL_MAXABS = 0.02  # measured 0.0056
EMA_MAXABS = 0.05  # measured 0.021
ROUNDING = 0.5 / 255  # 8-bit PNG rounding of a float canvas


# --- fixtures -------------------------------------------------------------------------------------------


def _tiny_detector():
    import torch
    from torch import nn

    def cbs(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
        )

    class Det(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.down1, self.down2 = cbs(3, 8), cbs(8, 16, 2), cbs(16, 32, 2)
            self.up, self.fuse = nn.Upsample(scale_factor=2, mode="nearest"), cbs(48, 16)
            self.pred = nn.Conv2d(16, 8, 1)  # 4 box + 1 obj + 3 classes

        def forward(self, x):
            p8 = self.down1(self.stem(x))
            y = self.fuse(torch.cat([self.up(self.down2(p8)), p8], 1))
            return self.pred(y).flatten(2).transpose(1, 2)  # [1, N, C]

    torch.manual_seed(0)
    model = Det()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial folded BN
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mnn")


@pytest.fixture(scope="module")
def onnx_path(work) -> Path:
    import torch

    path = work / "det.onnx"
    x = torch.rand(1, 3, SIZE, SIZE)
    torch.onnx.export(
        _tiny_detector(), x, str(path), input_names=["images"], output_names=["output"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _canvas(rng: np.random.Generator) -> np.ndarray:
    """A structured CHW [0, 1] image: a colour gradient plus three flat boxes and discs."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    img = np.stack([xx * rng.uniform(), yy * rng.uniform(), np.full_like(xx, rng.uniform())])
    for _ in range(3):
        (x0, y0), s, color = rng.integers(0, SIZE - 16, 2), rng.integers(8, 24), rng.uniform(size=3)
        if rng.random() < 0.5:
            mask = (xx * (SIZE - 1) - x0 - s / 2) ** 2 + (yy * (SIZE - 1) - y0 - s / 2) ** 2 < (s / 2) ** 2
        else:
            mask = np.zeros_like(xx, bool)
            mask[y0 : y0 + s, x0 : x0 + s] = True
        img[:, mask] = color[:, None]
    return img.astype(np.float32)


@pytest.fixture(scope="module")
def canvases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [_canvas(rng) for _ in range(N_CALIB + 4)]


@pytest.fixture(scope="module")
def calib_dir(work, canvases) -> Path:
    mt.write_letterboxed_images(canvases[:N_CALIB], work / "calib")
    return work / "calib"


@pytest.fixture(scope="module")
def eval_inputs(calib_dir, canvases) -> list[np.ndarray]:
    from PIL import Image

    seen = [
        np.asarray(Image.open(p), np.float32).transpose(2, 0, 1) / 255
        for p in sorted(calib_dir.iterdir())[:2]
    ]
    noise = np.random.default_rng(1).random((2, 3, SIZE, SIZE), dtype=np.float32)
    return [x[None].astype(np.float32) for x in [*seen, *canvases[N_CALIB:], *noise]]


@pytest.fixture(scope="module")
def ort_ref(onnx_path, eval_inputs) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"images": x})[0] for x in eval_inputs]


@pytest.fixture(scope="module")
def fp32(onnx_path, work) -> Path:
    return mt.convert(onnx_path, work / "det_fp32.mnn", fp16=False).artifact


@pytest.fixture(scope="module")
def fp16(onnx_path, work) -> Path:
    return mt.convert(onnx_path, work / "det_fp16.mnn", fp16=True).artifact


def _quantize(fp32: Path, calib: Path, out: Path, method: str) -> mt.QuantLog:
    return mt.quantize(
        fp32, out, calib, width=SIZE, height=SIZE, used_image_num=N_CALIB, feature_method=method, batch_size=8
    )


@pytest.fixture(scope="module")
def kl(fp32, calib_dir, work) -> mt.QuantLog:
    return _quantize(fp32, calib_dir, work / "det_kl.mnn", "KL")


@pytest.fixture(scope="module")
def ema(fp32, calib_dir, work) -> mt.QuantLog:
    return _quantize(fp32, calib_dir, work / "det_ema.mnn", "EMA")


@pytest.fixture(scope="module")
def custom_onnx(work) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu0"),
        helper.make_node("EdgeKitMagic", ["a"], ["b"], name="magic0", domain="ai.edgekit.custom"),
        helper.make_node("Hardmax", ["b"], ["y"], name="hardmax0"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "custom", io[:1], io[1:])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.edgekit.custom", 1)]
    path = work / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def _compare(path: Path, eval_inputs, ort_ref) -> tuple[float, float]:
    """(max abs error, min cosine) of ``path`` against ORT over every eval input."""
    maxabs, cos_min = 0.0, 1.0
    for x, ref in zip(eval_inputs, ort_ref, strict=True):
        (out,) = mt.run_mnn(path, x)
        assert out.shape == ref.shape
        maxabs = max(maxabs, float(np.abs(out - ref).max()))
        cos_min = min(cos_min, float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref)))
    return maxabs, cos_min


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# --- ops ------------------------------------------------------------------------------------------------


def test_supported_ops_are_parsed_from_the_converter():
    ops = mt.supported_onnx_ops()
    assert {"Conv", "Resize", "Concat", "Reshape", "Transpose", "Sigmoid", "NonMaxSuppression"} <= ops
    assert "Hardmax" not in ops and "Dump ONNX support Ops" not in ops
    assert mt.supported_onnx_ops() is ops  # cached per process


def test_unsupported_ops_names_custom_domain_and_missing_ops(custom_onnx, onnx_path):
    assert mt.unsupported_ops(custom_onnx) == [
        ("ai.edgekit.custom:EdgeKitMagic", "magic0"),
        ("Hardmax", "hardmax0"),
    ]
    assert mt.unsupported_ops(onnx_path) == []
    with pytest.raises(UnsupportedOpError, match="EdgeKitMagic") as err:
        mt.require_supported(custom_onnx)
    assert "magic0" in err.value.hint


def test_converter_message_becomes_unsupported_op_error(custom_onnx, work):
    out = work / "custom.mnn"
    with pytest.raises(UnsupportedOpError) as err:
        mt.convert(custom_onnx, out, fp16=False)
    assert err.value.ops == ["EdgeKitMagic", "Hardmax"] and err.value.backend == "mnn"
    assert not out.exists() and not _leftovers(work)


# --- convert --------------------------------------------------------------------------------------------


def test_fp32_matches_onnxruntime(fp32, eval_inputs, ort_ref):
    maxabs, cos_min = _compare(fp32, eval_inputs, ort_ref)
    assert maxabs <= FP32_MAXABS and cos_min >= 0.99999


def test_fp16_is_about_half_the_size_and_close(fp16, fp32, eval_inputs, ort_ref):
    assert 0.4 < fp16.stat().st_size / fp32.stat().st_size < 0.6  # measured 0.54 (graph overhead)
    maxabs, cos_min = _compare(fp16, eval_inputs, ort_ref)
    assert 0 < maxabs <= FP16_MAXABS and cos_min >= 0.9999  # > 0: the weights really are fp16


def test_a_crashing_tool_is_a_build_error_naming_the_signal(onnx_path, work, monkeypatch):
    monkeypatch.setattr(mt, "_TOOL_SNIPPET", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(BuildError, match="SIGSEGV"):
        mt.convert(onnx_path, work / "crash.mnn", fp16=False)
    assert not (work / "crash.mnn").exists() and not _leftovers(work)


def test_a_hanging_tool_is_killed_after_the_timeout(onnx_path, work, monkeypatch):
    monkeypatch.setattr(mt, "_TOOL_SNIPPET", "import time; time.sleep(60)")
    with pytest.raises(BuildError, match="did not finish within 1 s"):
        mt.convert(onnx_path, work / "hang.mnn", fp16=False, timeout=1)


# --- quantize -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, tol", [("KL", KL_MAXABS), ("EMA", EMA_MAXABS)])
def test_int8_loads_is_smaller_and_close_to_fp32(method, tol, request, fp32, eval_inputs, ort_ref):
    log = request.getfixturevalue(method.lower())
    assert log.config["feature_quantize_method"] == method and len(log.images) == N_CALIB
    assert log.artifact.stat().st_size < 0.5 * fp32.stat().st_size  # measured KL 0.37, EMA 0.42
    mt.check_outputs_sane(mt.run_mnn(log.artifact, eval_inputs[0]), producer=f"quantizer method {method}")
    maxabs, cos_min = _compare(log.artifact, eval_inputs, ort_ref)
    assert maxabs <= tol and cos_min >= INT8_COS_MIN
    assert maxabs > FP16_MAXABS  # int8 error is visible: this is not a float model in disguise


def test_kl_and_ema_give_different_models(kl, ema, eval_inputs):
    assert kl.artifact.read_bytes() != ema.artifact.read_bytes()
    (a,), (b,) = mt.run_mnn(kl.artifact, eval_inputs[0]), mt.run_mnn(ema.artifact, eval_inputs[0])
    assert np.abs(a - b).max() > 1e-4


def test_sidecar_has_kl_scales_and_ema_zeros(kl, ema):
    assert kl.sidecar == kl.artifact.with_name("det_kl.mnn.json") and kl.sidecar.is_file()
    assert kl.scales.nonzero > 0 and 0 < kl.scales.min_scale <= kl.scales.max_scale
    # EMA keeps its scales in the graph; 3.6.1 writes the side-car with every scale 0
    assert ema.scales.tensors > 0 and ema.scales.nonzero == 0


def test_admm_features_are_refused_before_running_anything(fp32, calib_dir, work, monkeypatch):
    monkeypatch.setattr(mt, "run_tool", lambda *a, **k: pytest.fail("the quantizer must not run"))
    with pytest.raises(ConfigError, match="all zeros"):
        _quantize(fp32, calib_dir, work / "admm.mnn", "ADMM")
    assert not (work / "admm.mnn").exists()


def test_ema_batch_must_divide_the_image_count(fp32, calib_dir, work):
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        mt.quantize(fp32, work / "x.mnn", calib_dir, width=SIZE, height=SIZE, used_image_num=30)


def test_width_height_must_match_the_model(fp32, calib_dir, work):
    with pytest.raises(ConfigError, match="takes 64x64"):
        mt.quantize(fp32, work / "x.mnn", calib_dir, width=96, height=96, used_image_num=8)


def test_empty_folder_is_a_calibration_error(fp32, work):
    (work / "empty").mkdir()
    with pytest.raises(CalibrationError, match="is empty"):
        _quantize(fp32, work / "empty", work / "x.mnn", "KL")


def test_a_text_file_is_a_calibration_error(fp32, calib_dir, work):
    folder = work / "with_txt"
    folder.mkdir()
    for p in sorted(calib_dir.iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(CalibrationError, match="notes.txt"):
        _quantize(fp32, folder, work / "x.mnn", "EMA")


def test_too_few_or_wrongly_sized_images_are_calibration_errors(fp32, canvases, work):
    small = mt.write_letterboxed_images(canvases[:4], work / "small")
    with pytest.raises(CalibrationError, match="4 images, 32 requested"):
        _quantize(fp32, small[0].parent, work / "x.mnn", "KL")
    big = mt.write_letterboxed_images([np.zeros((3, 80, 80))], work / "big")
    with pytest.raises(CalibrationError, match="stretch"):
        mt.calibration_images(big[0].parent, 1, (SIZE, SIZE))


# --- images and runtime ---------------------------------------------------------------------------------


def test_canvases_reach_the_quantizer_within_8_bit_rounding(calib_dir, canvases):
    """Replay MNN's Helper::preprocessInput (RGBA -> RGB, corner-to-corner bilinear map, mean 0, /255)."""
    from PIL import Image

    mnn = pytest.importorskip("MNN")
    config = {
        "sourceFormat": mnn.CV_ImageFormat_RGBA, "destFormat": mnn.CV_ImageFormat_RGB,
        "filterType": mnn.CV_Filter_BILINEAL, "mean": (0.0,) * 4, "normal": (1 / 255,) * 3 + (1.0,),
    }  # fmt: skip
    process, corners = mnn.CVImageProcess(config), [0, 0, 0, SIZE - 1, SIZE - 1, 0, SIZE - 1, SIZE - 1]
    matrix = mnn.CVMatrix()
    matrix.setPolyToPoly(corners, corners)
    process.setMatrix(matrix)
    worst = 0.0
    for path, canvas in zip(sorted(calib_dir.iterdir()), canvases, strict=False):
        rgba = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGBA")))
        assert rgba.shape == (SIZE, SIZE, 4)
        zeros = np.zeros((1, 3, SIZE, SIZE), np.float32)
        tensor = mnn.Tensor(zeros.shape, mnn.Halide_Type_Float, zeros, mnn.Tensor_DimensionType_Caffe)
        process.convert(rgba, SIZE, SIZE, 0, tensor)
        seen = np.array(tensor.getData(), np.float32).reshape(3, SIZE, SIZE)
        worst = max(worst, float(np.abs(seen - canvas).max()))
    assert 0 < worst <= ROUNDING + 1e-6


def test_write_letterboxed_images_refuses_normalised_arrays(work):
    with pytest.raises(CalibrationError, match="outside"):
        mt.write_letterboxed_images([np.full((3, SIZE, SIZE), -0.5)], work / "neg")
    assert not (work / "neg").exists()


def test_run_mnn_keeps_the_callers_stdout_clean(fp32):
    code = (
        "import json, numpy as np; from edgekit.backends.mnn.tools import run_mnn; "
        f"out = run_mnn({str(fp32)!r}, np.zeros((1, 3, {SIZE}, {SIZE}), np.float32)); "
        "print(json.dumps([list(o.shape) for o in out]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [[1, (SIZE // 2) ** 2, 8]]
    assert "The device supports" in proc.stderr and "MNN use high precision" in proc.stderr


def test_check_outputs_sane_catches_zeros_and_nan():
    with pytest.raises(BuildError, match="quantizer method ADMM produced zeros"):
        mt.check_outputs_sane([np.zeros((1, 4, 8))], producer="quantizer method ADMM")
    with pytest.raises(BuildError, match="NaN"):
        mt.check_outputs_sane([np.ones(3), np.array([1.0, np.nan])])
    mt.check_outputs_sane([np.array([0.0, 1e-3])])


def test_run_mnn_on_a_broken_file_is_a_build_error(work):
    (work / "junk.mnn").write_bytes(b"not a model")
    with pytest.raises(BuildError, match="cannot load"):
        mt.run_mnn(work / "junk.mnn", np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_mnn_version_is_the_tested_one():
    assert mt.mnn_version() == mt.TESTED_MNN_VERSION


# --- no pip, no network (keep last: the tools above have all run by then) ------------------------------


def test_the_aliyun_stub_shadows_the_telemetry_sdk():
    env = mt._tool_env()
    assert env["PIP_NO_INDEX"] == "1"
    code = "import aliyun.log as m; print(m.__file__); from aliyun.log import LogClient"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "ImportError" in proc.stderr  # MNN.tools' logger would give up here
    assert proc.stdout.startswith(env["PYTHONPATH"].split(":")[0])


def test_the_tools_installed_no_telemetry_sdk(kl, ema, fp16):
    # MNN.tools would `pip install aliyun-log-python-sdk` (and downgrade protobuf) if it ever ran
    assert importlib.util.find_spec("aliyun") is None
