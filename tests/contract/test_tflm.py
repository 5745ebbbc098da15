"""TFLite Micro passes the backend contract (its own full-integer INT8), plus TFLM-specific checks.

The template's tiny detector decodes inside the graph, which no full-integer model can keep; this
backend takes the torch model's raw maps (``torch_program = "export-raw"``), so the contract runs on a
small two-scale detector of the reference family (random weights, 32 px) whose ONNX is the FP32
reference and whose raw-map program is what the converter gets. The device is this host's
``tflite-micro`` interpreter, the reference kernels an MCU's firmware runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgekit.backends.tflm import converter_python
from edgekit.core.errors import MissingExtraError
from tests.backends.test_tflm_bundle import SKIP_NO_ARM
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, BackendContract


def _missing() -> str | None:
    if importlib.util.find_spec("tflite_micro") is None:
        return "tflite-micro is not installed: pip install 'edgekit[tflite]'"
    try:
        converter_python()
    except MissingExtraError as exc:
        return f"{exc.message} ({exc.hint})"
    return None


def _model():
    import torch

    from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

    torch.manual_seed(0)
    return TinyYolo(TinyYoloConfig(num_classes=NUM_CLASSES, input_size=INPUT_SIZE, width=0.25)).eval()


class TestTflmContract(BackendContract):
    backend_name = "tflm"
    precisions = ("int8",)
    # TFLM int8 (PT2E, per-channel, 16 calibration images of a random-weight 32 px model) against ORT FP32
    # of the same model, decoded rows: measured max error ~0.4 px on boxes, ~0.02 on scores; limits ~2x.
    tolerances = {"int8": {"boxes": 1.0, "scores": 0.05}}
    skip_reason = _missing()

    @pytest.fixture(scope="class")
    @classmethod
    def fp32_onnx(cls, work) -> Path:
        from edgekit.export.onnx import export_onnx

        return export_onnx(_model(), [1, 3, INPUT_SIZE, INPUT_SIZE], work / "tiny_yolo_fp32.onnx")

    def program(self, work: Path) -> Path:
        from edgekit.export.onnx import export_raw_program

        path = work / "tiny_yolo_raw.pt2"
        if not path.exists():
            export_raw_program(_model(), [1, 3, INPUT_SIZE, INPUT_SIZE], path)
        return path

    def test_model_is_full_integer_with_an_exact_resolver(self, artifact):
        tflm = artifact.meta["tflm"]
        assert tflm["input"]["dtype"] == "int8" and all(o["dtype"] == "int8" for o in tflm["outputs"])
        assert tflm["input"]["layout"] == "NHWC" and tflm["input"]["shape"] == [1, INPUT_SIZE, INPUT_SIZE, 3]
        assert [o["stride"] for o in tflm["outputs"]] == [8, 16]
        assert "QUANTIZE" not in tflm["ops"] or tflm["ops"]["QUANTIZE"] <= 2  # int8 -> int8 requantize only
        resolver = (artifact.dir / artifact.files["op_resolver"]).read_text()
        assert f"kEdgekitOpCount = {len(tflm['resolver'])}" in resolver
        assert all(f"resolver.{m}()" in resolver for m in tflm["resolver"])

    def test_arena_is_measured_two_ways_and_the_firmware_gets_a_margin(self, artifact):
        arena = artifact.meta["tflm"]["arena"]
        assert arena["recorded_bytes"] and arena["bisected_bytes"]
        assert abs(arena["recorded_bytes"] - arena["bisected_bytes"]) <= 64
        assert arena["firmware_bytes"] >= 1.05 * max(arena["recorded_bytes"], arena["bisected_bytes"])
        settings = (artifact.dir / artifact.files["model_settings"]).read_text()
        assert f"kTensorArenaSize = {arena['firmware_bytes']}" in settings

    def test_litert_runs_the_same_model_and_agrees_with_tflm(self, artifact):
        """LiteRT's optimized int8 kernels against TFLM's reference kernels on the same ``.tflite``.

        Both round the same integer arithmetic; they may differ by an LSB of an output scale, so the
        maps must agree within 2 quantization steps (and the rows, decoded the same way, within the
        contract's FP32 tolerance of each other).
        """
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        from edgekit.backends.tflm.tflm_run import TflmRuntime, dequantize, tflite_outputs

        tflm = artifact.meta["tflm"]
        lite = Interpreter(model_path=str(artifact.dir / artifact.files["model"]))
        lite.allocate_tensors()
        micro = TflmRuntime(artifact.meta, str(artifact.dir), None)
        x = np.random.default_rng(5).random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        q = micro.to_input(x)
        lite.set_tensor(lite.get_input_details()[0]["index"], q)
        lite.invoke()
        micro.interpreter.set_input(q, 0)
        micro.interpreter.invoke()
        details = lite.get_output_details()
        for out in tflite_outputs(tflm):
            a = micro.interpreter.get_output(int(out["index"])).astype(np.int32)
            b = lite.get_tensor(details[int(out["index"])]["index"]).astype(np.int32)
            assert a.shape == b.shape and np.abs(a - b).max() <= 2
        assert dequantize(q, tflm["input"]["scale"], tflm["input"]["zero_point"]).shape[-1] == 3

    def test_a_qdq_onnx_is_refused(self, backend, fp32_onnx, work, calib):
        from edgekit.core.errors import ModelError
        from edgekit.quantize import quantize_int8

        qdq = quantize_int8(fp32_onnx, work / "qdq.onnx", lambda: calib.arrays(), progress=False).path
        with pytest.raises(ModelError, match="already quantized"):
            backend.build(
                qdq, self.options("int8"), work / "out_qdq", calib=calib, torch_program=self.program(work)
            )
        assert not (work / "out_qdq").exists()

    def test_over_budget_is_refused_before_anything_is_written(self, backend, fp32_onnx, work, calib):
        from edgekit.core.errors import BudgetExceededError

        options = {**self.options("int8"), "limits": {"flash_kb": 1024, "ram_kb": 4}}
        out = work / "out_budget"
        with pytest.raises(BudgetExceededError, match=r"RAM \d+ KB needed .* 4 KB available") as info:
            backend.build(fp32_onnx, options, out, calib=calib, torch_program=self.program(work))
        assert "prune" in info.value.hint and "input_size" in info.value.hint
        assert not out.exists()

    def test_the_bundle_compiles_for_the_boards_core(self, backend, fp32_onnx, work, calib):
        import shutil

        options = {**self.options("int8"), "limits": {"flash_kb": 2048, "ram_kb": 1024, "core": "cortex-m7"}}
        art = backend.build(
            fp32_onnx, options, work / "out_m7", calib=calib, torch_program=self.program(work)
        )
        compiled = art.meta["tflm"]["compiled"]
        if shutil.which("arm-none-eabi-g++") is None:
            assert not compiled["compiled"] and "gcc-arm-none-eabi" in compiled["reason"]
            pytest.skip(reason=SKIP_NO_ARM)
        model_bytes = (art.dir / art.files["model"]).stat().st_size
        assert (
            compiled["compiled"]
            and compiled["text"] >= model_bytes
            and compiled["data"] == compiled["bss"] == 0
        )
        assert art.meta["payload_bytes"] == model_bytes
