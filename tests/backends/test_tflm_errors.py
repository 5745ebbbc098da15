"""TFLite Micro's bad inputs: one clear error each, nothing written.

The converter is reached through ``EDGEKIT_TFLITE_PYTHON``; here a stand-in interpreter plays a converter
that reports a graph which is not full-integer, or exits without a report, so each refusal path runs
without the 2 GB environment. The real converter's paths are in ``tests/contract/test_tflm.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgekit.backends.tflm import TflmBackend, _check_ops, converter_python
from edgekit.core.errors import (
    BuildError,
    CalibrationError,
    MissingExtraError,
    ModelError,
    UnsupportedOpError,
)
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, make_calibration_set

OPTIONS = {"precision": "int8", "threads": 1, "head": "yolov5", "num_classes": NUM_CLASSES}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from edgekit.export.onnx import export_onnx, export_raw_program
    from tests.contract.test_tflm import _model

    work = tmp_path_factory.mktemp("tflm-err")
    shape = [1, 3, INPUT_SIZE, INPUT_SIZE]
    return (
        work,
        export_onnx(_model(), shape, work / "fp32.onnx"),
        export_raw_program(_model(), shape, work / "raw.pt2"),
        make_calibration_set(work / "calibration"),
    )


def _fake_converter(tmp_path: Path, report: dict | None, code: int, message: str) -> Path:
    script = tmp_path / "fake_python"
    body = (
        "import json, sys\n"
        "args = sys.argv[2:]\n"
        "report = args[args.index('--report') + 1]\n"
        f"data = {json.dumps(report)!r}\n"
        "if data != 'null':\n"
        "    open(report, 'w').write(data)\n"
        f"print({message!r}, file=sys.stderr)\n"
        f"sys.exit({code})\n"
    )
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


def test_a_missing_converter_environment_names_the_make_step(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_TFLITE_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(MissingExtraError, match="converter environment is missing") as info:
        converter_python()
    assert "make tflite-env" in info.value.hint


def test_a_float_op_left_in_the_graph_is_named(inputs, monkeypatch, tmp_path):
    work, fp32, program, calib = inputs
    report = {
        "ok": False,
        "problems": ["2 float tensors inside the graph", "QUANTIZE int8 -> float32"],
        "float_tensors": [{"name": "grid", "dtype": "FLOAT32"}],
        "quantize_dequantize": [{"op": "DEQUANTIZE", "in": "INT8", "out": "FLOAT32"}],
        "flex_or_custom_ops": [],
    }
    monkeypatch.setenv(
        "EDGEKIT_TFLITE_PYTHON", str(_fake_converter(tmp_path, report, 2, "litert_pt2e: error: float"))
    )
    out = work / "out_float"
    with pytest.raises(UnsupportedOpError, match="DEQUANTIZE") as info:
        TflmBackend().build(fp32, OPTIONS, out, calib=calib, torch_program=program)
    assert "float tensors" in info.value.hint
    assert not out.exists()


def test_a_converter_crash_is_a_build_error_with_its_last_lines(inputs, monkeypatch, tmp_path):
    work, fp32, program, calib = inputs
    fake = _fake_converter(tmp_path, None, 2, "litert_pt2e: error: cannot lower aten.erf")
    monkeypatch.setenv("EDGEKIT_TFLITE_PYTHON", str(fake))
    with pytest.raises(BuildError, match="cannot lower aten.erf"):
        TflmBackend().build(fp32, OPTIONS, work / "out_crash", calib=calib, torch_program=program)
    assert not (work / "out_crash").exists()


def test_an_op_tflm_has_no_kernel_for_is_named():
    with pytest.raises(UnsupportedOpError, match="FLEX_ERF") as info:
        _check_ops({"ops": {"CONV_2D": 3, "FLEX_ERF": 1}})
    assert info.value.ops == ["FLEX_ERF"] and "no kernel" in info.value.hint


def test_too_few_calibration_images_and_an_onnx_only_model_are_refused(inputs, tmp_path):
    work, fp32, program, _ = inputs
    small = make_calibration_set(tmp_path / "small", count=4)
    with pytest.raises(CalibrationError, match="needs at least 8"):
        TflmBackend().build(fp32, OPTIONS, work / "out_small", calib=small, torch_program=program)
    with pytest.raises(ModelError, match="only an ONNX file was given to build"):
        TflmBackend().build(fp32, OPTIONS, work / "out_onnx", calib=make_calibration_set(tmp_path / "c"))
    assert not (work / "out_small").exists() and not (work / "out_onnx").exists()
