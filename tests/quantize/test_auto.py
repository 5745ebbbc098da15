"""Auto-calibration on a tiny detector whose first prediction conv is hard to quantize.

``evaluate`` is a real function of the model: it runs the candidate in ONNX Runtime on held-out
images and maps the output error vs FP32 (normalised MSE) to a pseudo-mAP, so a worse model scores
lower. Measured here: all-INT8 nMSE ~7.5e-6 for every method (pseudo drop ~3 points); with the
outlier prediction conv in float ~1e-7 (drop ~0.05 points).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekit.core.errors import BuildError, ConfigError
from edgekit.quantize.auto import auto_calibrate
from tests.quantize.conftest import HOST_FORM
from tests.quantize.test_ptq import export_detector, make_detector, run, structured_images

BASELINE = 0.80
SHARPNESS = 5000.0  # pseudo-mAP = BASELINE * exp(-SHARPNESS * nMSE)
KEYS = {"name", "method", "keep_float", "map50", "map50_95", "size_bytes", "drop", "within", "path"}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_detector(heads=2)
    with torch.no_grad():
        weight = model.preds[0].weight
        weight[:, 0, 0, 0] = weight.abs().max() * 40  # outliers: per-channel INT8 loses the small weights
    return export_detector(model, tmp_path_factory.mktemp("auto") / "det.onnx")


def make_evaluate(fp32: Path):
    held_out = structured_images(4, seed=7)
    references = [run(fp32, batch) for batch in held_out]

    def evaluate(candidate: Path) -> dict[str, float]:
        pairs = zip(held_out, references, strict=True)
        errors = [np.mean((run(candidate, b) - r) ** 2) / np.var(r) for b, r in pairs]
        nmse = float(np.mean(errors))
        return {"map50_95": BASELINE * math.exp(-SHARPNESS * nmse), "map50": 0.97 * math.exp(-nmse * 1000)}

    return evaluate


def test_picks_cheapest_within_drop_and_lists_all(fp32: Path, tmp_path: Path) -> None:
    evaluate = make_evaluate(fp32)
    assert evaluate(fp32)["map50_95"] == pytest.approx(BASELINE)  # FP32 itself loses nothing
    result = auto_calibrate(
        fp32,
        structured_images(16, seed=1),
        evaluate,
        max_drop=1.0,
        baseline_map50_95=BASELINE,
        weight_ranges=(HOST_FORM.reduce_range,),
        workdir=tmp_path,
        progress=False,
    )
    names = [c["name"].replace("-w7", "") for c in result.candidates]
    assert names[:3] == ["int8-minmax", "int8-entropy", "int8-percentile"]
    assert all(KEYS <= c.keys() and Path(c["path"]).is_file() for c in result.candidates)
    assert not any(c["within"] for c in result.candidates[:3])  # all-INT8 misses the budget
    assert result.passed and result.chosen["within"] and result.chosen["drop"] <= 1.0
    assert result.chosen["keep_float"] == ["/preds.0/Conv"]
    assert result.sensitivity[0][0] == "/preds.0/Conv"
    assert len(result.candidates) == 4 and result.chosen is result.candidates[-1]
    assert result.warnings == []  # three calibrators, three different sets of scales
    chosen = onnx.load(result.chosen["path"])
    assert any(n.op_type == "QuantizeLinear" for n in chosen.graph.node)
    assert result.chosen_result.path == Path(result.chosen["path"])


def test_both_weight_ranges_are_candidates_where_both_can_win(fp32: Path, tmp_path: Path) -> None:
    result = auto_calibrate(
        fp32,
        structured_images(8, seed=1),
        make_evaluate(fp32),
        max_drop=100.0,
        baseline_map50_95=BASELINE,
        methods=("minmax",),
        weight_ranges=(True, False),
        workdir=tmp_path,
        progress=False,
    )
    assert [(c["name"], c["reduce_range"]) for c in result.candidates] == [
        ("int8-minmax-w7", True),
        ("int8-minmax", False),
    ]
    assert (
        result.results["int8-minmax-w7"].weight_bits == 7 and result.results["int8-minmax"].weight_bits == 8
    )
    with pytest.raises(ConfigError, match="weight range"):
        auto_calibrate(fp32, [], None, max_drop=1, baseline_map50_95=0.8, weight_ranges=(), workdir=tmp_path)


def test_reports_best_failing_candidate_when_nothing_fits(fp32: Path, tmp_path: Path) -> None:
    result = auto_calibrate(
        fp32,
        lambda: iter(structured_images(8, seed=1)),
        make_evaluate(fp32),
        max_drop=0.0,
        baseline_map50_95=BASELINE,
        methods=("minmax", "percentile"),
        weight_ranges=(HOST_FORM.reduce_range,),
        max_float_layers=2,
        workdir=tmp_path,
        progress=False,
    )
    assert not result.passed and not result.chosen["within"]
    assert len(result.candidates) == 4  # two methods + two float-fallback steps
    assert [len(c["keep_float"]) for c in result.candidates] == [0, 0, 1, 2]
    assert result.chosen["map50_95"] == max(c["map50_95"] for c in result.candidates)
    with pytest.raises(ConfigError, match="unknown or no calibration methods"):
        auto_calibrate(fp32, [], None, max_drop=1, baseline_map50_95=0.8, methods=("kl",), workdir=tmp_path)


def refusing_evaluate(fp32: Path, max_nmse: float):
    """``make_evaluate`` behind a build check: a candidate straying more than ``max_nmse`` is refused."""
    held_out, score = structured_images(4, seed=7), make_evaluate(fp32)
    references = [run(fp32, batch) for batch in held_out]

    def evaluate(candidate: Path) -> dict[str, float]:
        pairs = zip(held_out, references, strict=True)
        nmse = float(np.mean([np.mean((run(candidate, b) - r) ** 2) / np.var(r) for b, r in pairs]))
        if nmse > max_nmse:
            raise BuildError(f"diverges from FP32: nMSE {nmse:.2g} > {max_nmse:g}", "keep layers in float")
        return score(candidate)

    return evaluate


def test_a_refused_build_is_a_candidate_not_the_end(fp32: Path, tmp_path: Path) -> None:
    # all-INT8 strays ~7.5e-6 (refused), the outlier conv kept in float ~1e-7 (built): the float fallback runs
    kwargs = dict(baseline_map50_95=BASELINE, methods=("minmax", "percentile"), max_float_layers=2)
    kwargs |= dict(weight_ranges=(HOST_FORM.reduce_range,), workdir=tmp_path, progress=False)
    images = structured_images(8, seed=1)
    result = auto_calibrate(fp32, images, refusing_evaluate(fp32, 1e-6), max_drop=1.0, **kwargs)
    refused = [c for c in result.candidates if "error" in c]
    assert [c["name"] for c in refused] == ["int8-minmax", "int8-percentile"]
    assert all("diverges from FP32" in c["error"] and not c["within"] for c in refused)
    assert "error" not in result.chosen and result.chosen["keep_float"]
    with pytest.raises(BuildError, match="no INT8 candidate passed the build: int8-minmax: diverges"):
        auto_calibrate(fp32, images, refusing_evaluate(fp32, 0.0), max_drop=1.0, **kwargs)
