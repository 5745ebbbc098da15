"""TFLite Micro from a user's ONNX, and the graph pieces PT2E needed help with (squeeze-and-excite).

A float ONNX detector is cut at its prediction convs: the part before becomes a torch program through
edgekit's small ONNX importer (checked against ONNX Runtime), the part after — the model's own decode,
whatever its anchors or DFL — runs in ONNX Runtime on the dequantized maps. The three output layouts
users bring (YOLOv5 rows, YOLOv8 channels-first, YOLOv8 with a DFL head) are built and compared with
ONNX Runtime FP32 of the whole ONNX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.core.errors import ModelError
from tests.contract import test_tflm as contract
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, make_calibration_set
from tests.contract.test_tflm import _missing, _model

pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
TOL = contract.TestTflmContract.tolerances["int8"]  # (not imported by name: pytest would collect it here)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return make_calibration_set(tmp_path_factory.mktemp("tflm-onnx") / "calibration")


def _inputs(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32) for _ in range(n)]


def _layouts():
    from tests.test_predict import YoloV8Dfl, YoloV8Layout

    m = _model()
    return {
        "yolov5": (m, "yolov5"),
        "yolov8": (YoloV8Layout(m), "yolov8"),
        "dfl": (YoloV8Dfl(m, INPUT_SIZE), "yolov8"),
    }


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "dfl"])
def test_an_onnx_detector_builds_full_integer_and_its_own_tail_decodes(layout, calib, tmp_path):
    from edgekit.core.registry import get_backend
    from edgekit.export.onnx import export_onnx, ort_session
    from edgekit.export.onnx_cut import raw_program_from_onnx
    from edgekit.runners.detcore import candidates

    module, head = _layouts()[layout]
    onnx_path = export_onnx(module, (1, 3, INPUT_SIZE, INPUT_SIZE), tmp_path / f"{layout}.onnx")
    program = raw_program_from_onnx(onnx_path, tmp_path / "raw.pt2", head)
    backend = get_backend("tflm")
    options = {"precision": "int8", "threads": 1, "head": head, "num_classes": NUM_CLASSES}
    art = backend.build(onnx_path, options, tmp_path / "art", calib=calib, torch_program=program)
    tflm = art.meta["tflm"]
    assert tflm["decode"]["kind"] == "onnx-tail" and tflm["decode"]["importer_max_abs_error"] < 1e-4
    assert tflm["input"]["dtype"] == "int8" and all(o["dtype"] == "int8" for o in tflm["outputs"])
    assert "DEQUANTIZE" not in tflm["ops"] and tflm["ops"].get("QUANTIZE", 0) <= 2  # int8 requantize only
    assert "decode_tail.onnx" in (art.dir / art.files["bundle_readme"]).read_text()
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    for x in _inputs():
        ref = sess.run(None, {name: x})[0]
        got = backend.infer(art, x)[0]
        assert got.shape == ref.shape
        # the same rows in the same layout: boxes within TOL px, scores within TOL
        r, g = candidates(ref, head, 0.0), candidates(got, head, 0.0)
        assert np.abs(r[:, :4] - g[:, :4]).max() < TOL["boxes"]
        assert np.abs(r[:, 4] - g[:, 4]).max() < TOL["scores"]


def test_an_op_the_importer_lacks_is_named_with_its_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.export.onnx_cut import raw_program_from_onnx

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((6, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Sign", ["a"], ["b"], name="odd_activation"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="pred"),
        helper.make_node("Sigmoid", ["c"], ["output0"], name="decode"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 16, 16])],
        [w1, w2],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match="Sign \\(node 'odd_activation'\\) is not among"):
        raw_program_from_onnx(path, tmp_path / "raw.pt2", "yolov5")
    assert not (tmp_path / "raw.pt2").exists()


class _SqueezeExciteNet(nn.Module):
    def __init__(self) -> None:
        from edgekit.compress.layers import SqueezeExcite

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LeakyReLU(0.1))
        self.se = SqueezeExcite(16)
        self.pred = nn.Conv2d(16, 11, 1)

    def forward(self, x):
        return (self.pred(self.se(self.stem(x))),)


def _convert_net(net: nn.Module, tmp_path: Path) -> tuple[Path, dict, np.ndarray]:
    """Export ``net`` at 32 px, run the PT2E converter on it; the .tflite, its report, the calibration set."""
    import json
    import subprocess

    from edgekit.backends.tflm import CONVERTER, converter_python

    program, calib_path = tmp_path / "net.pt2", tmp_path / "calib.npy"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), str(program))
    calib = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    np.save(calib_path, calib)
    out, report = tmp_path / "net.tflite", tmp_path / "report.json"
    argv = [converter_python(), str(CONVERTER), "--program", str(program), "--calib", str(calib_path)]
    argv += ["--out", str(out), "--layout", "NHWC", "--per-channel", "--report", str(report)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-800:]
    return out, json.loads(report.read_text()), calib


def _tflm_and_torch(tflite: Path, net: nn.Module, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The single output of ``net`` for each of ``xs``: TFLM (dequantized) and torch FP32, both NHWC."""
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(tflite), arena_size=200_000)
    qi = interp.get_input_details(0)["quantization_parameters"]
    qo = interp.get_output_details(0)["quantization_parameters"]
    got, ref = [], []
    for x in xs:
        q = np.clip(
            np.round(x[None].transpose(0, 2, 3, 1) / qi["scales"][0]) + qi["zero_points"][0], -128, 127
        )
        interp.set_input(q.astype(np.int8), 0)
        interp.invoke()
        got.append((interp.get_output(0).astype(np.float32) - qo["zero_points"][0]) * qo["scales"][0])
        with torch.no_grad():
            ref.append(net(torch.from_numpy(x[None]))[0].numpy().transpose(0, 2, 3, 1))
    return np.concatenate(got), np.concatenate(ref)


def test_a_squeeze_excite_block_converts_without_float_islands(tmp_path):
    """MBConv-SE's global pool, gate and scale stay int8 (litert misses the pool in a re-exported graph)."""
    torch.manual_seed(0)
    net = _SqueezeExciteNet().eval()
    out, report, calib = _convert_net(net, tmp_path)
    ops = report["ops"]
    assert {"MEAN", "LOGISTIC", "MUL"} <= set(ops) and not {"QUANTIZE", "DEQUANTIZE"} & set(ops)
    # and the int8 model still computes the block: TFLM against torch FP32
    got, ref = _tflm_and_torch(out, net, calib[:1])
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 0.05  # int8 of a random 3-layer net: measured ~1 %


class _PoolResidualNet(nn.Module):
    """Micro-YOLO's stride-16 entry: a linear projection, a max pool, then a 1x1 conv and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.pool = nn.MaxPool2d(2)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.LeakyReLU(0.1))
        self.shrink = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.pred = nn.Conv2d(16, 11, 1)

    def forward(self, x):
        p = self.pool(self.project(x))
        return (self.pred(p + self.shrink(self.expand(p))),)


def test_a_conv_after_a_max_pool_gets_the_bias_of_the_scale_it_reads(tmp_path):
    """TFLite's MAX_POOL_2D keeps its input's scale; the conv after it must be quantized for that scale.

    Before the pool shared its input's scale in PT2E, the next conv's int32 bias was quantized for the
    pool's own observed scale: the model converted, ran, and Micro-YOLO's stride-16 map came out at cosine
    0.84 against torch. The converter now also refuses any conv whose bias disagrees with its input.
    """
    torch.manual_seed(0)
    net = _PoolResidualNet()
    with torch.no_grad():  # a BN that shifts and scales, as a trained one does
        net.project[1].running_mean.uniform_(-1, 1)
        net.project[1].running_var.uniform_(0.5, 2)
        net.project[1].weight.uniform_(0.5, 2)
        net.project[1].bias.uniform_(-1, 1)
    net.eval()
    out, report, calib = _convert_net(net, tmp_path)
    assert report["bias_scale_mismatches"] == []
    got, ref = (a.ravel() for a in _tflm_and_torch(out, net, calib[:4]))
    assert float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.99


def test_the_bias_check_names_a_conv_quantized_for_another_input_scale():
    from types import SimpleNamespace

    from edgekit.backends.tflm.converters.tflite_graph import bias_scale_mismatches

    info = [{"scale": 0.05}, {"scale": [0.01, 0.02]}, {"scale": [0.0005, 0.001]}, {"scale": [0.0004, 0.0008]}]
    good = SimpleNamespace(inputs=[0, 1, 2])
    bad = SimpleNamespace(inputs=[0, 1, 3])  # bias scale / weight scale = 0.04, the input has 0.05
    found = bias_scale_mismatches(["CONV_2D", "CONV_2D", "ADD"], [good, bad, good], info)
    assert found == [{"op_index": 1, "op": "CONV_2D", "input_scale": 0.05, "bias_implies": 0.04}]
