"""`edgekit deploy` of a real Ultralytics export as a user brings it: its dynamic batch, no labels, the
default calibrator on ONNX Runtime (the search `edgekit build` runs, in the device's form)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.realmodels.conftest import PER_PHOTO, real_model
from tests.realmodels.fetch import models, photo_crops

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_real_export_deploys_to_onnxruntime_int8_with_the_default_calibrator(tmp_path):
    from edgekit.pipeline import DeployRequest, deploy

    name = "nudenet-yolov8n"
    model = real_model(name)
    size = models()[name]["input_size"]
    local = yaml.safe_load((REPO / "targets" / "local.yaml").read_text())
    target = tmp_path / "local-real.yaml"
    target.write_text(yaml.safe_dump({**local, "name": "local-real", "input_size": size}))
    photos = photo_crops(tmp_path / "photos", per_photo=PER_PHOTO)
    run = deploy(DeployRequest(
        target=str(target), model=str(model), recipe="none", images=str(photos), out=tmp_path / "runs",
        calib_root=tmp_path / "calibration", progress=False, command=["test"], run_id="real",
    ))  # fmt: skip
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "ok" and (run / "model_static.onnx").is_file()  # the dynamic batch, fixed
    quant = next(n for n in record["nodes"] if n["stage"] == "quantize")
    tried = quant["extra"]["calibration_search"]
    assert tried[-1].get("kept", 0) >= 0.95 and tried[-1].get("score_error", 1) <= 0.05
    assert all("error" in t for t in tried[:-1])  # what was refused before it, each with its reason
    build = next(n for n in record["nodes"] if n["stage"] == "build")
    assert build["extra"]["parity"]["detections"]["kept"] >= 0.95  # the build's own check, on the same file
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "teacher_agreement" and summary["deployed"]["map50"] >= 0.8
