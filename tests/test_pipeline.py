"""End to end: `edgekit deploy --target local` on the cached test checkpoint, real agent and runner."""

import json
from pathlib import Path

import pytest

from edgekit.pipeline import DeployRequest, deploy, make_plan
from edgekit.quantize.form import host_qdq_form
from tests.conftest import TRAIN_SCALE

REPO = Path(__file__).resolve().parents[1]

SUMMARY_KEYS = {
    "target",
    "backend",
    "precision",
    "recipe",
    "reference",
    "deployed",
    "latency_ms",
    "fps",
    "power_w",
    "energy_mj_per_inference",
    "calibration",
}


def _request(tmp_path, shapes_root, **kw):
    base = dict(
        target="local",
        data=str(shapes_root),
        epochs_scale=TRAIN_SCALE,
        out=tmp_path / "runs",
        calib_root=tmp_path / "calibration",
        progress=False,
        command=["test"],
    )
    return DeployRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, shapes_root, trained):
    tmp = tmp_path_factory.mktemp("deploy")
    return deploy(_request(tmp, shapes_root, recipe="none", run_id="int8"))


@pytest.mark.slow
def test_deploy_writes_every_file_and_the_flat_summary(int8_run):
    for name in (
        "record.json",
        "summary.json",
        "report.md",
        "report.html",
        "model_fp32.onnx",
        "model_int8.onnx",
        "artifact/artifact.json",
    ):
        assert (int8_run / name).is_file(), name
    s = json.loads((int8_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["backend"] == "onnxruntime" and s["precision"] == "int8" and s["status"] == "ok"
    assert s["power_w"] is None and s["energy_mj_per_inference"] is None  # no sensor: not measured, never 0
    assert s["latency_ms"]["p50"] > 0 and s["fps"] > 0
    assert s["calibration"]["name"].startswith("shapes-hard") and len(s["calibration"]["sha256"]) == 64


@pytest.mark.slow
def test_int8_map_is_computed_from_the_device_outputs_and_stays_close_to_fp32(int8_run):
    record = json.loads((int8_run / "record.json").read_text())
    stages = [n["stage"] for n in record["nodes"]]
    assert stages == ["data", "train", "reference", "export", "quantize", "build", "eval", "bench"]
    train = record["nodes"][1]
    assert train["cached"] is True  # the session checkpoint was reused, not retrained
    ref, ev = record["nodes"][2]["metrics"], record["nodes"][6]["metrics"]
    assert "onnxruntime" in record["nodes"][6]["tools"]
    # Head kept in float: INT8 within 2 mAP@0.5:0.95 points of FP32 (research §4.2 measured -0.15).
    assert ref["map50_95"] - ev["map50_95"] < 0.02
    quant = record["nodes"][4]["extra"]
    assert quant["keep_float"] and quant["method"] == "minmax"
    # the default searches as edgekit build does: minmax, the first method, kept the detections
    assert [t["method"] for t in quant["calibration_search"]] == ["minmax"]
    assert quant["calibration_search"][0]["kept"] >= 0.95
    assert record["nodes"][4]["config"]["method"] == "default"
    artifact = json.loads((int8_run / "artifact" / "artifact.json").read_text())
    assert artifact["calibration"]["sha256"] == record["calibration"]["sha256"]
    assert artifact["calibration"]["spec"]["input_size"] == 160  # the spec the images went through
    assert artifact["int8_source"] == "qdq" and artifact["quantization"]["method"] == "minmax"
    assert artifact["parity"]["checked"] and "calibration images" in artifact["parity"]["inputs"]
    # Quantized for the device's CPU (local = this host), and the record and the report say why.
    form = host_qdq_form()
    assert quant["weight_bits"] == artifact["quantization"]["weight_bits"] == form.weight_bits
    assert quant["weight_range_reason"] == form.reason and quant["cpu_source"] == "this host"
    assert form.reason in record["nodes"][4]["label"]
    assert form.reason in (int8_run / "report.md").read_text()
    bench_cpu = record["nodes"][7]["extra"]["device"]["cpu"]
    assert bench_cpu["int8_dot"] == form.int8_dot  # the runner reported the same CPU


@pytest.fixture(scope="module")
def gated_control_run(tmp_path_factory, shapes_root, trained):
    """The default recipe (1-epoch fine-tune) with its control and a p99 gate no board meets: one run
    that the gate fails after writing, and whose control is trained (the two tests below read it)."""
    import yaml

    from edgekit.core.errors import GateError

    tmp = tmp_path_factory.mktemp("gated")
    # the default recipe's steps with a 1-epoch fine-tune (its 20 epochs are for real deploys, not CI)
    recipe = yaml.safe_load(open(REPO / "recipes" / "default.yaml"))
    recipe["steps"][0]["finetune"]["epochs"] = 1.0
    (tmp / "default-short.yaml").write_text(yaml.safe_dump(recipe))
    req = _request(
        tmp, shapes_root, recipe=str(tmp / "default-short.yaml"), run_id="gated", control=True,
        max_p99_ms=1e-6, max_map_drop=50.0,
    )  # fmt: skip
    with pytest.raises(GateError, match="max_p99_ms"):
        deploy(req)
    return tmp / "runs" / "gated"


@pytest.mark.slow
def test_default_recipe_prunes_and_gates_fail_after_writing(gated_control_run):
    run = gated_control_run
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "gates_failed"
    assert s["gates"]["max_p99_ms"]["passed"] is False and s["gates"]["max_map_drop"]["passed"] is True
    assert (
        s["deployed"]["params"] < s["reference"]["params"] and s["deployed"]["macs"] < s["reference"]["macs"]
    )
    assert "max_p99_ms" in (run / "report.md").read_text()


@pytest.mark.slow
def test_control_trains_the_compressed_architecture_from_scratch_and_reports_recipe_minus_control(
    gated_control_run,
):
    run = gated_control_run
    record = json.loads((run / "record.json").read_text())
    nodes = {n["stage"]: n for n in record["nodes"]}
    assert [n["stage"] for n in record["nodes"]][-1] == "control"
    ctl, comp = nodes["control"], nodes["compress:prune"]
    assert ctl["parent"] == comp["id"]  # the control of the compressed model, off the deploy chain
    assert nodes["export"]["parent"] == comp["id"]
    assert (
        ctl["metrics"]["params"] == comp["metrics"]["params"]
        and ctl["metrics"]["macs"] == comp["metrics"]["macs"]
    )
    # the quick reference's 10 epochs and the fine-tune's 1, both x TRAIN_SCALE
    assert ctl["config"]["epochs"] == pytest.approx(11 * TRAIN_SCALE)
    gain = ctl["extra"]["recipe_minus_control"]["map50_95"]
    assert gain == pytest.approx(100 * (comp["metrics"]["map50_95"] - ctl["metrics"]["map50_95"]), abs=0.01)
    s = json.loads((run / "summary.json").read_text())
    assert s["control"]["recipe_minus_control"]["map50_95"] == gain
    assert "Recipe against its control" in (run / "report.md").read_text()


def test_control_needs_the_builtin_reference_and_a_compressing_recipe(tmp_path, shapes_root):
    from edgekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--control"):
        make_plan(_request(tmp_path, shapes_root, recipe="none", control=True))


def test_dry_run_plan_lists_the_stages(tmp_path, shapes_root):
    plan = make_plan(_request(tmp_path, shapes_root, recipe="default"))
    stages = plan.describe()["stages"]
    assert (
        stages[:3] == ["data", "model", "reference"] and "compress:prune" in stages and "quantize" in stages
    )
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_jetson_here_quantizes_in_tensorrts_form_stages_and_stops_at_the_missing_tensorrt(
    tmp_path, shapes_root, trained
):
    """No GPU, no TensorRT here: the host side runs, the device build says what to install, no number."""
    from edgekit.core.errors import DeviceError

    with pytest.raises(DeviceError, match="sudo apt install tensorrt"):
        deploy(_request(tmp_path, shapes_root, target="jetson", device="local", recipe="none", run_id="j"))
    record = json.loads((tmp_path / "runs" / "j" / "record.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "build"
    quant = next(n for n in record["nodes"] if n["stage"] == "quantize")
    assert "TensorRT-form QDQ" in quant["label"] and quant["config"]["qdq_form"]["layout"] == "tensorrt"
    assert not any(n["stage"] in ("bench", "eval") for n in record["nodes"])  # nothing measured
    staged = json.loads((tmp_path / "runs" / "j" / "staged" / "artifact.json").read_text())
    assert staged["device_build"]["state"] == "staged" and staged["parity"]["checked"]
    assert not (tmp_path / "runs" / "j" / "artifact").exists()


def test_plan_refuses_a_calibrator_the_backend_lacks_and_qat_on_a_self_quantizer(tmp_path, shapes_root):
    from edgekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="calibrator 'kl' is not a method of backend onnxruntime"):
        make_plan(_request(tmp_path, shapes_root, calibrator="kl"))
    with pytest.raises(ConfigError, match="QAT"):
        make_plan(_request(tmp_path, shapes_root, target="rk3588", device="local", recipe="qat"))
    plan = make_plan(_request(tmp_path, shapes_root, target="rk3588", device="local", recipe="none"))
    assert "quantize" not in plan.describe()["stages"]  # MNN quantizes inside its build


@pytest.mark.slow
def test_user_onnx_goes_through_the_same_pipeline(tmp_path, shapes_root, trained, int8_run):
    from edgekit.export.onnx import export_onnx

    onnx_path = export_onnx(trained.model, [1, 3, 160, 160], tmp_path / "user.onnx")
    run = deploy(_request(tmp_path, shapes_root, model=str(onnx_path), recipe="none", run_id="user"))
    record = json.loads((run / "record.json").read_text())
    assert [n["stage"] for n in record["nodes"]][:3] == ["data", "model", "reference"]
    ours = json.loads((int8_run / "record.json").read_text())
    # Same weights: the FP32 reference of the user ONNX equals the torch reference of the built-in run.
    assert record["nodes"][2]["metrics"]["map50_95"] == pytest.approx(
        ours["nodes"][2]["metrics"]["map50_95"], abs=1e-3
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "ok" and s["deployed"]["map50_95"] is not None


@pytest.mark.slow
def test_auto_calibrator_measures_every_candidate_on_the_device(tmp_path, shapes_root, trained):
    run = deploy(
        _request(tmp_path, shapes_root, recipe="none", calibrator="auto", max_drop=1.0, run_id="auto")
    )
    record = json.loads((run / "record.json").read_text())
    quant = next(n for n in record["nodes"] if n["stage"] == "quantize")
    candidates = quant["extra"]["candidates"]
    assert {c["method"] for c in candidates} >= {"minmax", "entropy", "percentile"}
    assert sum(c["chosen"] for c in candidates) == 1
    chosen = next(c for c in candidates if c["chosen"])
    assert quant["extra"]["method"] == chosen["method"]
    # The chosen candidate's mAP came from the device run; the deployed eval reproduces it exactly:
    # the file that ships is byte for byte the candidate that was measured.
    ev = next(n for n in record["nodes"] if n["stage"] == "eval")["metrics"]
    assert ev["map50_95"] == pytest.approx(chosen["map50_95"], abs=1e-9)
    assert "minmax" in (run / "report.md").read_text() and "percentile" in (run / "report.md").read_text()
    # Every candidate's build checked it against FP32 on the calibration images, as the shipped build
    # does (on the seeded noise a build without a set uses, INT8 reads lower than on images).
    shipped = json.loads((run / "artifact" / "artifact.json").read_text())["parity"]["inputs"]
    assert "calibration images" in shipped
    assert {c.get("checked_on") for c in candidates if "error" not in c} == {shipped}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "backend", "model_file"),
    [("rk3588", "mnn", "model.mnn"), ("rpi4", "ncnn", "model.ncnn.param")],
)
def test_arm_targets_deploy_here_with_device_local(
    tmp_path, shapes_root, trained, target, backend, model_file
):
    """The board's artifact (its own INT8 from the calibration set) runs on this host with --device local."""
    run = deploy(_request(tmp_path, shapes_root, target=target, device="local", recipe="none", run_id=target))
    record = json.loads((run / "record.json").read_text())
    stages = [n["stage"] for n in record["nodes"]]
    assert stages == ["data", "train", "reference", "export", "build", "eval", "bench"]  # no QDQ stage
    artifact = json.loads((run / "artifact" / "artifact.json").read_text())
    assert artifact["backend"] == backend and artifact["int8_source"] == "calibration"
    assert artifact["files"]["model"] == model_file and artifact["parity"]["checked"]
    assert artifact["calibration"]["sha256"] == record["calibration"]["sha256"]
    build = record["nodes"][4]
    assert build["extra"]["quantization"]["method"] in BACKENDS_METHODS[backend]
    ref, ev = record["nodes"][2]["metrics"], record["nodes"][5]["metrics"]
    assert backend in record["nodes"][5]["tools"]
    # INT8 from the runtime's own outputs stays within 2 mAP@0.5:0.95 points of the FP32 reference.
    assert ref["map50_95"] - ev["map50_95"] < 0.02
    s = json.loads((run / "summary.json").read_text())
    assert s["backend"] == backend and s["status"] == "ok" and s["power_w"] is None


BACKENDS_METHODS = {"mnn": ("kl", "ema"), "ncnn": ("kl", "aciq")}


def _mcu_target(tmp_path, base: str, **limits) -> str:
    import yaml

    from edgekit.core.config import load_target

    spec = yaml.safe_load(open(load_target(base).source))
    spec.update({"input_size": 160, "name": f"{base}-160"})
    spec["runtime"].update({"iterations": 20, "min_seconds": 1.0})
    spec["limits"] = {**spec["limits"], **limits}
    path = tmp_path / f"{base}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_an_mcu_target_deploys_full_int8_with_its_firmware_bundle(tmp_path, shapes_root, trained):
    """STM32H7 at 160 px with --device local: TFLM's own outputs give the mAP, the bundle is complete."""
    target = _mcu_target(tmp_path, "stm32h7")
    run = deploy(_request(tmp_path, shapes_root, target=target, device="local", recipe="none", run_id="mcu"))
    record = json.loads((run / "record.json").read_text())
    assert [n["stage"] for n in record["nodes"]] == [
        "data",
        "train",
        "reference",
        "export",
        "build",
        "eval",
        "bench",
    ]
    art = json.loads((run / "artifact" / "artifact.json").read_text())
    assert art["backend"] == "tflm" and art["tflm"]["input"]["dtype"] == "int8"
    for role in ("model_data_cc", "model_data_h", "op_resolver", "model_settings", "bundle_readme"):
        assert (run / "artifact" / art["files"][role]).is_file()
    assert art["tflm"]["budget"]["ram_bytes"] <= 1024 * 1024 and (run / "model_raw.pt2").is_file()
    ref, ev = record["nodes"][2]["metrics"], record["nodes"][5]["metrics"]
    assert ref["map50_95"] - ev["map50_95"] < 0.02  # from the TFLM interpreter's own outputs
    assert record["nodes"][4]["metrics"]["size_bytes"] == art["tflm"]["budget"]["model_bytes"]
    # each raw map comes as int8 groups of channels of one range (box sizes, offsets, scores), own scales
    parts = [o["parts"] for o in art["tflm"]["outputs"]]
    assert all(len(p) >= 2 for p in parts), parts
    assert all(sorted(c for part in p for c in part["channels"]) == list(range(11)) for p in parts)
    assert "put its channels back in place" in (run / "artifact" / art["files"]["bundle_readme"]).read_text()


def test_a_user_onnx_deploys_to_an_mcu_with_its_own_decode(tmp_path, shapes_root, trained):
    """A YOLOv8-layout ONNX alone: cut at its prediction convs, its own tail decodes on the host."""
    from edgekit.export.onnx import export_onnx
    from tests.test_predict import YoloV8Layout

    onnx_path = export_onnx(YoloV8Layout(trained.model), [1, 3, 160, 160], tmp_path / "user_v8.onnx")
    target = _mcu_target(tmp_path, "stm32h7")
    run = deploy(
        _request(
            tmp_path,
            shapes_root,
            model=str(onnx_path),
            target=target,
            device="local",
            recipe="none",
            run_id="mcu-onnx",
        )
    )
    record = json.loads((run / "record.json").read_text())
    art = json.loads((run / "artifact" / "artifact.json").read_text())
    assert art["output"]["head"] == "yolov8" and art["tflm"]["decode"]["kind"] == "onnx-tail"
    assert (run / "artifact" / art["files"]["decode_tail"]).is_file()
    assert art["tflm"]["input"]["dtype"] == "int8" and "DEQUANTIZE" not in art["tflm"]["ops"]
    ref = next(n for n in record["nodes"] if n["stage"] == "reference")["metrics"]
    ev = next(n for n in record["nodes"] if n["stage"] == "eval")["metrics"]
    assert ref["map50_95"] - ev["map50_95"] < 0.02  # from the TFLM interpreter's outputs + the ONNX's tail


def test_an_mcu_too_small_for_the_model_stops_at_the_build_with_needed_and_available(
    tmp_path, shapes_root, trained
):
    from edgekit.core.errors import BudgetExceededError

    target = _mcu_target(tmp_path, "stm32f4")
    with pytest.raises(BudgetExceededError, match=r"RAM \d+ KB needed .*192 KB available"):
        deploy(_request(tmp_path, shapes_root, target=target, device="local", recipe="none", run_id="f4"))
    record = json.loads((tmp_path / "runs" / "f4" / "record.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "build"
    assert not (tmp_path / "runs" / "f4" / "artifact").exists()


@pytest.mark.slow
def test_default_calibrator_of_a_self_quantizing_backend_tries_the_next_setting(
    tmp_path, shapes_root, trained, monkeypatch
):
    """deploy's default calibrator is edgekit build's: each method, then it with more of the head float."""
    from edgekit.backends.mnn import backend as mnn
    from edgekit.core.errors import BuildError

    real = mnn._checked_int8

    def refuse_ema_at_depth_0(model, fp32, calib, options):
        quantizer = options.quantizer
        if quantizer.method == "ema" and quantizer.float_head_depth == 0:
            raise BuildError("refused for this test", "none")
        return real(model, fp32, calib, options)

    monkeypatch.setattr(mnn, "_checked_int8", refuse_ema_at_depth_0)
    run = deploy(_request(tmp_path, shapes_root, target="rk3588", device="local", recipe="none", run_id="t"))
    build = next(n for n in json.loads((run / "record.json").read_text())["nodes"] if n["stage"] == "build")
    tried = build["extra"]["calibration_search"]
    assert [(t["method"], t.get("float_head_depth", 0)) for t in tried] == [("ema", 0), ("ema", 1)]
    assert "refused for this test" in tried[0]["error"] and "error" not in tried[-1]
    assert build["extra"]["quantization"]["float_head_depth"] == 1
