"""OpenVINO passes the backend contract (fp32, fp16 IR, INT8 from NNCF), plus OpenVINO-specific checks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from edgekit.backends.contract.artifact import Artifact
from edgekit.device.agent import runner_path
from tests.contract.backend_contract import BackendContract


def _missing() -> str | None:
    for module, what in (("openvino", "the OpenVINO runtime"), ("nncf", "NNCF (OpenVINO's INT8)")):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed: pip install 'edgekit[openvino]'"
    return None


class TestOpenVinoContract(BackendContract):
    backend_name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    skip_reason = _missing()
    # fp32: OpenVINO f32 vs ONNX Runtime, float rounding only. fp16 weights computed in f32, and INT8
    # (random weights, 16 random calibration images, head in float): limits set from measured errors.
    tolerances = {
        "fp32": {"boxes": 1e-3, "scores": 1e-4},
        "fp16": {"boxes": 0.05, "scores": 0.01},
        "int8": {"boxes": 0.5, "scores": 0.1},
    }

    def test_int8_runs_int8_convolutions_and_keeps_the_head_float(self, artifact, precision):
        if precision != "int8":
            pytest.skip(reason="INT8 only")
        quant = artifact.meta["quantization"]
        assert quant["quantized_layers"] >= 1 and quant["float_layers"]  # the prediction conv stayed float
        assert (
            artifact.meta["openvino"]["convolutions"].get("u8", 0)
            + artifact.meta["openvino"]["convolutions"].get("i8", 0)
            == quant["quantized_layers"]
        )
        assert artifact.meta["tools"]["nncf"]

    def test_fp32_asks_for_f32_and_the_runner_reports_layer_times(
        self, artifact, precision, work, eval_inputs
    ):
        if precision == "int8":
            pytest.skip(reason="fp32 / fp16 only")
        meta = Artifact.load(artifact.dir).meta
        assert meta["runtime"]["inference_precision"] == {"fp32": "f32", "fp16": "f16"}[precision]
        argv = [sys.executable, str(runner_path(meta["runner"])), "--artifact", str(artifact.dir)]
        argv += ["--warmup", "1", "--min-warmup-s", "0", "--iterations", "3", "--min-seconds", "0"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        report = json.loads(done.stdout)["openvino"]
        assert report["inference_precision"] in ("f32", "f16") and report["device"] == "CPU"
        assert report["layers"] and all(row["ms"] >= 0 and row["layer"] for row in report["layers"])

    def test_float_ranked_that_leaves_nothing_int8_is_refused_and_leaves_nothing(
        self, backend, fp32_onnx, work, calib
    ):
        """The tiny model has one activation quantizer (its prediction conv is float): bypassing it leaves
        no INT8 convolution. (The ranking itself is checked on the real YOLOX in tests/realmodels.)"""
        if self.skip_reason:
            pytest.skip(reason=self.skip_reason)
        from edgekit.core.errors import BuildError

        out = work / "ranked"
        options = {**self.options("int8"), "quantizer": {"float_ranked": 1}}
        with pytest.raises(BuildError) as caught:
            backend.build(fp32_onnx, options, out, calib=calib, reference=fp32_onnx)
        assert "float_ranked" in caught.value.message and "--precision" in caught.value.hint
        assert not out.exists()
