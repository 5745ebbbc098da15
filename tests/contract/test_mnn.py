"""MNN passes the backend contract (fp32, fp16 weights, INT8 from the calibration set), plus MNN's own checks.

Tolerances of the runner's detections vs ONNX Runtime FP32 on the contract's 32-px tiny detector, measured
with MNN 3.6.1 on x86 (4 held-out images, every candidate row), asserted at about 3-25x the figure:

| precision | boxes (px) measured -> asserted | scores measured -> asserted |
|---|---|---|
| fp32 | 3.8e-6 -> 1e-4 | 6e-8 -> 1e-5 |
| fp16 (weights) | 4.9e-4 -> 2e-3 | 1.2e-5 -> 1e-4 |
| int8 EMA (default) | 0.025 -> 0.1 | 3.3e-4 -> 2e-3 |
| int8 KL | 1.08 -> 3.0 | 0.052 -> 0.15 |

On the reference detector (160 px, ``bench/mnn_methods.py``) mAP@0.5:0.95 was ORT fp32 0.5018, MNN fp32
0.5018, fp16 0.5021, int8 EMA 0.4947 and int8 KL 0.0000 (KL zeroed every score), hence EMA by default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.core.errors import BuildError, CalibrationError, ConfigError, UnsupportedOpError
from edgekit.device.agent import runner_path
from tests.contract.backend_contract import (
    EVAL_IMAGES,
    BackendContract,
    add_custom_op,
    make_calibration_set,
)


def _mnn_skip_reason() -> str | None:
    try:
        import _tools  # noqa: F401  (MNN's converter/quantizer bindings)
        import MNN  # noqa: F401
    except Exception as exc:  # a broken wheel raises more than ImportError
        return f"MNN is not importable ({exc}): install the extra, pip install 'edgekit[mnn]'"
    return None


#: The toy's prediction conv is fed directly by its only other conv: a float head would leave no INT8
#: layer (both ends of a float conv are typed float), so the contract's INT8 builds quantize both.
TOY_INT8 = {"float_head": False}


class TestMnnContract(BackendContract):
    backend_name = "mnn"
    precisions = ("fp32", "fp16", "int8")
    tolerances = {
        "fp32": {"boxes": 1e-4, "scores": 1e-5},
        "fp16": {"boxes": 2e-3, "scores": 1e-4},
        "int8": {"boxes": 0.1, "scores": 2e-3},  # the default method, EMA
    }
    skip_reason = _mnn_skip_reason()

    def options(self, precision: str) -> dict:
        options = super().options(precision)
        return {**options, "quantizer": dict(TOY_INT8)} if precision == "int8" else options

    def unsupported_onnx(self, fp32_onnx, work):
        return add_custom_op(
            fp32_onnx, work / "magic.onnx", "EdgeKitMagic", "ai.edgekit.custom"
        ), "EdgeKitMagic"

    # -- MNN-specific fixtures ---------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def fp32_artifact(cls, backend, fp32_onnx, work, calib):
        return backend.build(fp32_onnx, cls().options("fp32"), work / "own_fp32", calib=calib)

    # -- what the artifact records -----------------------------------------------------------------
    def test_artifact_records_quantizer_and_calibration(self, artifact, precision, calib):
        meta = artifact.meta
        assert meta["runtime"] == {"threads": 1, "precision": "high", "backend": "CPU"}
        assert meta["tools"]["mnn"] == "3.6.1" and meta["files"] == {"model": "model.mnn"}
        if precision != "int8":
            assert meta["quantization"] is None and meta["calibration"] is None
            assert meta["mnn"]["weights"] == precision
            return
        assert meta["int8_source"] == "calibration"
        assert meta["quantization"] == {
            "method": "ema",
            "weight_method": "max_abs",
            "batch_size": 8,
            "images": 16,
            "float_head": False,
            "float_head_depth": 0,
            "keep_float": [],
            "float_layers": [],
        }
        assert meta["mnn"]["float_head"] == [] and meta["mnn"]["float_tensors"] == 0
        ref = meta["calibration"]
        assert (ref["name"], ref["version"], ref["sha256"]) == (calib.name, calib.version, calib.sha256)
        assert ref["spec"]["input_size"] == 32
        config = meta["mnn"]["quantizer_config"]
        assert config["feature_quantize_method"] == "EMA" and config["used_image_num"] == 16
        assert config["width"] == config["height"] == 32 and config["batch_size"] == 8
        assert config["mean"] == [0.0] * 3 and config["normal"] == pytest.approx([1 / 255] * 3)
        assert meta["mnn"]["calibration_images"] == 16

    def test_int8_is_really_int8_and_smaller(self, artifact, precision, fp32_artifact):
        from edgekit.backends.mnn.graph import describe

        fp32_bytes = fp32_artifact.path().stat().st_size
        assert describe(fp32_artifact.path()).int8_layers == 0
        if precision == "fp32":
            return
        assert (
            artifact.path().stat().st_size < fp32_bytes
        )  # measured: fp16 0.78, EMA 0.82 (graph-heavy model)
        graph = describe(artifact.path())
        assert graph.conv_layers == 2
        if precision == "int8":
            assert graph.int8_layers == 2 and 0 < graph.scale_min <= graph.scale_max
            assert artifact.meta["mnn"]["graph"]["int8_layers"] == 2
            parity = artifact.meta["parity"]["outputs"][0]
            assert parity["boxes_cosine"] >= 0.99 and parity["scores_cosine"] >= 0.99  # measured 1.0 / 1.0
        else:
            assert graph.int8_layers == 0

    def test_int8_error_is_visible(self, artifact, precision):
        # an int8 model computing exactly like fp32 would be a float model in disguise
        if precision == "int8":
            assert artifact.meta["parity"]["outputs"][0]["max_abs"] > 1e-3  # measured 0.018

    def test_kl_is_the_other_method_and_is_judged_by_its_detections(self, backend, fp32_onnx, work, calib):
        """MNN 3.6.1's KL on the toy keeps 8 % of FP32's detections (raw outputs within 3 px / 0.15 of
        FP32's): the detection check refuses it, and nothing is left."""
        assert backend.methods == ("ema", "kl")
        options = {**self.options("int8"), "quantizer": {"method": "KL", **TOY_INT8}}  # MNN's spelling
        out = work / "own_kl"
        with pytest.raises(BuildError, match="mnn int8 output 'output' diverges from FP32 in its detections"):
            backend.build(fp32_onnx, options, out, calib=calib, reference=fp32_onnx)
        assert not out.exists()

    # -- refusals ----------------------------------------------------------------------------------
    def test_int8_without_a_calibration_set_is_refused(self, backend, fp32_onnx, work):
        out = work / "out_no_calib"
        with pytest.raises(CalibrationError, match="needs a calibration set"):
            backend.build(fp32_onnx, self.options("int8"), out)
        assert not out.exists()

    @pytest.mark.parametrize(
        "quantizer, reason",
        [
            ({"method": "admm"}, "segfaults"),
            ({"method": "ADMM"}, "all zeros"),
            ({"weight_method": "admm"}, "no gain"),
        ],
    )
    def test_admm_is_refused_with_the_reason(
        self, backend, fp32_onnx, work, calib, monkeypatch, quantizer, reason
    ):
        from edgekit.backends.mnn import tools as mnn_tools

        monkeypatch.setattr(mnn_tools, "run_tool", lambda *a, **k: pytest.fail("no MNN tool may run"))
        out = work / "out_admm"
        with pytest.raises(ConfigError, match=reason) as info:
            backend.build(fp32_onnx, {**self.options("int8"), "quantizer": quantizer}, out, calib=calib)
        assert "MnnQuantizer" in info.value.hint and not out.exists()

    def test_custom_domain_op_is_named_with_its_domain_and_node(self, backend, fp32_onnx, work):
        src, op = self.unsupported_onnx(fp32_onnx, work)
        with pytest.raises(UnsupportedOpError, match="EdgeKitMagic") as info:
            backend.build(src, self.options("int8"), work / "out_magic")
        assert info.value.ops == ["EdgeKitMagic"] and "custom op" in info.value.hint
        (problem,) = [p for p in backend.check(src, self.options("fp32")) if p.severity == "error"]
        assert "ai.edgekit.custom:EdgeKitMagic" in problem.message and "custom0" in problem.message

    def test_a_set_below_the_minimum_is_refused(self, backend, fp32_onnx, work):
        small = make_calibration_set(work / "small" / "calibration", count=backend.min_calibration_images - 1)
        out = work / "out_small"
        with pytest.raises(CalibrationError, match=f"has {small.count} images.*at least 8"):
            backend.build(fp32_onnx, self.options("int8"), out, calib=small)
        assert not out.exists()

    def test_more_images_than_the_set_holds_is_refused(self, backend, fp32_onnx, work, calib):
        options = {**self.options("int8"), "quantizer": {"method": "kl", "images": calib.count + 1}}
        with pytest.raises(CalibrationError, match="images=17 but calibration set 'contract' has 16"):
            backend.build(fp32_onnx, options, work / "out_many", calib=calib)

    def test_broken_scores_fail_the_build(self, backend, fp32_onnx, work, calib, monkeypatch):
        """MNN 3.6.1's KL zeroed the reference detector's scores; the parity check sees the scores alone."""
        real = type(backend)._infer

        def zero_scores(self, art, x):
            out = [o.copy() for o in real(self, art, x)]
            out[0][..., 4:] = 0.0
            return out

        monkeypatch.setattr(type(backend), "_infer", zero_scores)
        out = work / "out_broken_scores"
        with pytest.raises(BuildError, match="diverges from FP32 in its detections: 0.0%") as info:
            backend.build(fp32_onnx, self.options("int8"), out, calib=calib, reference=fp32_onnx)
        assert "calibrat" in info.value.hint and not out.exists()

    def test_a_model_whose_two_runs_differ_is_refused(self, backend, fp32_onnx, work, calib, monkeypatch):
        """MNN 3.6.1's INT8 on x86 gave a real YOLOv8n different outputs from run to run."""
        from edgekit.backends.mnn import tools as mnn_tools

        real, calls = mnn_tools.run_mnn, []

        def drifting(path, x, **kwargs):
            calls.append(path)
            return [o + len(calls) for o in real(path, x, **kwargs)]

        monkeypatch.setattr(mnn_tools, "run_mnn", drifting)
        out = work / "out_drifting"
        with pytest.raises(BuildError, match="different outputs on two runs of the same image") as info:
            backend.build(fp32_onnx, self.options("int8"), out, calib=calib, reference=fp32_onnx)
        assert "--calibrator" in info.value.hint and not out.exists()

    def test_a_float_head_runs_its_convs_in_float(
        self, artifact, precision, fp32_artifact, eval_inputs, work
    ):
        """Typing a conv's input and output tensors float makes MNN run it in float on its int8 weights."""
        from edgekit.backends.mnn import tools as mnn_tools
        from edgekit.backends.mnn.floats import head_convs, plan, type_float
        from edgekit.backends.mnn.graph import describe, load_graph

        if precision != "int8":
            return
        graph = load_graph(artifact.path())
        head = head_convs(graph)
        assert len(head) == 1  # the toy's prediction conv
        floated = work / "toy_float_head.mnn"
        assert type_float(artifact.path(), floated, plan(graph, head).indexes()) >= 2
        summary = describe(floated)
        assert summary.int8_layers == 0 and len(summary.float_layers) == 2  # c1 feeds the head directly
        x = eval_inputs[:1]
        fp32 = mnn_tools.run_mnn(fp32_artifact.path(), x)[0]
        int8 = mnn_tools.run_mnn(artifact.path(), x)[0]
        head_float = mnn_tools.run_mnn(floated, x)[0]
        assert np.array_equal(head_float, mnn_tools.run_mnn(floated, x)[0])
        # float arithmetic on int8 weights: closer to FP32 than the INT8 model (measured 0.0032 vs 0.018)
        assert np.abs(head_float - fp32).max() < np.abs(int8 - fp32).max()

    # -- the device runner -------------------------------------------------------------------------
    def test_runner_prints_one_json_line_and_uses_the_artifacts_threads(self, artifact, work):
        runner = runner_path(artifact.runner)
        argv = [sys.executable, str(runner), "--artifact", str(artifact.dir), "--iterations", "3",
                "--min-seconds", "0", "--warmup", "1", "--min-warmup-s", "0"]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        (line,) = proc.stdout.splitlines()
        result = json.loads(line)
        assert result["runner"] == "mnn_run" and result["runtime"] == "mnn" and result["threads"] == 1
        assert result["runtime_version"] == "3.6.1" and "The device supports" in proc.stderr

    def test_runner_keeps_the_onnx_output_shape(self, bench):
        assert len(bench.detections) == EVAL_IMAGES
        assert all(d.shape == (64, 6) for d in bench.detections)  # conf=0: every row of [1, 64, 8]


# -- pure logic (no MNN needed) ------------------------------------------------------------------------


def _set(count: int):
    return SimpleNamespace(count=count, name="s")


@pytest.mark.parametrize(
    "quantizer, count, used",
    [({"method": "ema"}, 21, 16), ({"method": "kl"}, 21, 21), ({"method": "ema", "images": 8}, 21, 8),
     ({"method": "ema", "batch_size": 4}, 10, 8), ({"method": "kl", "images": 5}, 9, 5)],
)  # fmt: skip
def test_calibration_count_rounds_only_the_default_to_the_ema_batch(quantizer, count, used):
    from edgekit.backends.mnn import MnnQuantizer, calibration_count

    assert calibration_count(MnnQuantizer(**quantizer), _set(count)) == used


def test_calibration_count_refuses_what_it_cannot_honour():
    from edgekit.backends.mnn import MnnQuantizer, calibration_count

    with pytest.raises(ConfigError, match="images=12 is not a multiple of batch_size=8"):
        calibration_count(MnnQuantizer(method="ema", images=12), _set(20))
    with pytest.raises(CalibrationError, match="fewer than one EMA batch"):
        calibration_count(MnnQuantizer(method="ema", batch_size=16), _set(12))


def test_mnn_mean_and_normal_reproduce_the_models_preprocessing():
    from edgekit.backends.mnn import canvas_spec, tool_mean_normal
    from edgekit.data.preprocess import PreprocessSpec, to_tensor

    spec = PreprocessSpec(
        input_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="BGR"
    )
    canvas = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels = to_tensor(canvas, canvas_spec(spec))[0] * 255  # what the PNG holds, RGB CHW
    mean, normal = tool_mean_normal(spec)
    bgr = pixels[::-1]  # MNN converts to the model's channel order (format BGR) before normalising
    mnn = (bgr - np.array(mean)[:, None, None]) * np.array(normal)[:, None, None]
    np.testing.assert_allclose(mnn, to_tensor(canvas, spec)[0], atol=1e-5)


def test_parity_sees_zeroed_scores_that_the_whole_output_hides():
    from edgekit.backends.contract.parity import compare

    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 160, (1, 50, 4)), rng.uniform(0, 1, (1, 50, 4))], -1).astype(
        np.float32
    )
    broken = ref.copy()
    broken[..., 4:] = 0.0
    parts = compare(ref, broken, "yolov5")
    assert parts["boxes_cosine"] == pytest.approx(1.0) and parts["scores_cosine"] == 0.0
    assert parts["cosine"] > 0.99  # what a whole-output check alone would see
