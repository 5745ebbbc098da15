"""TensorRT passes the backend contract as a device build, plus TensorRT-specific checks.

No GPU and no TensorRT exist here, so the "device" is this host with the simulated Jetson's
``trtexec`` first on its PATH: a test double that speaks trtexec's command line and output format
(TensorRT 8.5.2) and runs the staged ONNX with ONNX Runtime. The contract then runs for real: the
host stages the TensorRT-form ONNX and checks it against FP32, the agent builds the "engine" on the
device with ``trt_run.py --build``, completes the sidecar, checks it there, times it through
``--exportTimes`` and runs the eval images through ``--loadInputs``/``--exportOutput``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.backends.tensorrt.form import check_trt_qdq, quantize_trt_qdq
from edgekit.device.transport import LocalTransport
from tests.contract.backend_contract import INPUT_SIZE, BackendContract
from tests.device.fakeboard.fakeboard import make_fakeboard


def _calibration():
    rng = np.random.default_rng(2)
    return [rng.random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32) for _ in range(16)]


class TestTensorRTContract(BackendContract):
    backend_name = "tensorrt"
    precisions = ("fp32", "int8")
    # The double computes what ONNX Runtime computes on the staged model: fp32 rounding only; int8
    # (TensorRT form, random weights and calibration) as ONNX Runtime's QDQ contract: 0.25 px, 0.08.
    tolerances = {"fp32": {"boxes": 1e-4, "scores": 1e-5}, "int8": {"boxes": 0.25, "scores": 0.08}}

    def prepare_onnx(self, fp32_onnx: Path, precision: str, work: Path) -> Path:
        if precision != "int8":
            return fp32_onnx
        out = work / "tiny_trt_qdq.onnx"
        if not out.exists():
            quantize_trt_qdq(fp32_onnx, out, _calibration, method="minmax", keep_float=None, progress=False)
        return out

    def options(self, precision: str) -> dict:
        opts = super().options(precision)
        if precision == "int8":
            opts["quantizer"] = {"method": "minmax"}
        return opts

    def device_transport(self, work: Path) -> LocalTransport:
        env = make_fakeboard(work / "jetson", 5.0, 0.0)
        return LocalTransport(root=work, env={"PATH": env["PATH"]})

    def test_the_engine_was_built_on_the_device_and_checked_there(self, artifact, precision):
        build = artifact.meta["device_build"]
        assert build["state"] == "built" and build["on"] == "local" and build["check"]["passed"]
        assert artifact.files == {"source": "model.onnx", "model": "model.engine"}
        assert ("--int8" in build["argv"]) == (precision == "int8")
        assert artifact.meta["tools"]["tensorrt"] == "8.5.2"

    def test_int8_source_is_in_tensorrts_form(self, artifact, precision):
        if precision == "int8":
            assert check_trt_qdq(artifact.path("source")) == []
            assert artifact.meta["int8_source"] == "qdq"
