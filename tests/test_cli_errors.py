"""Bad input gets one clear error (error: + hint:, non-zero exit) and leaves nothing half-written."""

import json
import shutil
import subprocess

import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.cli import main
from tests.conftest import TRAIN_SCALE

NO_IMMUTABLE_FOLDERS = "cannot make a folder read-only here (chattr +i unavailable); root ignores mode bits"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def deploy_args(tmp_path, shapes_root, *extra):
    return [
        "deploy",
        "--quiet",
        "--data",
        str(shapes_root),
        "--epochs-scale",
        str(TRAIN_SCALE),
        "--out",
        str(tmp_path / "runs"),
        "--calib-root",
        str(tmp_path / "calibration"),
        *extra,
    ]


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, trained):
    from edgekit.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "ref.onnx"
    return export_onnx(trained.model, [1, 3, 160, 160], path)


def test_missing_model_file(tmp_path, capsys, shapes_root):
    code, _, err = run_cli(
        capsys, *deploy_args(tmp_path, shapes_root, "--model", "nope.onnx", "--recipe", "none")
    )
    assert code == 1 and "error: model file not found: nope.onnx" in err and "hint:" in err
    assert not (tmp_path / "runs").exists()


def test_truncated_onnx(tmp_path, capsys, shapes_root, fp32_onnx):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(fp32_onnx.read_bytes()[: fp32_onnx.stat().st_size // 2])
    code, _, err = run_cli(
        capsys, *deploy_args(tmp_path, shapes_root, "--model", str(bad), "--recipe", "none")
    )
    assert code == 1 and "truncated.onnx" in err and "hint:" in err
    assert not (tmp_path / "runs").exists()


def test_onnx_with_an_op_ort_cannot_run(tmp_path, capsys, shapes_root):
    node = helper.make_node("EdgeKitMagic", ["images"], ["output"], domain="ai.edgekit.custom")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 500, 11])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.edgekit.custom", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(
        capsys, *deploy_args(tmp_path, shapes_root, "--model", str(path), "--recipe", "none")
    )
    assert code == 1 and "EdgeKitMagic" in err and "onnxruntime" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_target_and_unknown_yaml_key(tmp_path, capsys, shapes_root):
    code, _, err = run_cli(capsys, *deploy_args(tmp_path, shapes_root, "--target", "nanopi"))
    assert code == 2 and "unknown target 'nanopi'" in err and "local" in err
    bad = tmp_path / "board.yaml"
    bad.write_text(
        "name: b\ndescription: d\nboard: b\nbackend: onnxruntime\nprecision: int8\n"
        "connection: {type: local}\nruntime: {iterations: 5, colour: red}\n"
    )
    code, _, err = run_cli(capsys, *deploy_args(tmp_path, shapes_root, "--target", str(bad)))
    assert code == 2 and "board.yaml" in err and "unknown key 'runtime.colour'" in err


def test_unknown_recipe_key(tmp_path, capsys, shapes_root):
    bad = tmp_path / "r.yaml"
    bad.write_text(
        "name: r\ndescription: d\nsteps:\n  - type: prune\n    method: l1\n    ratio: 0.2\n    speed: 3\n"
    )
    code, _, err = run_cli(capsys, *deploy_args(tmp_path, shapes_root, "--recipe", str(bad)))
    assert code == 2 and "r.yaml" in err and "speed" in err


def test_empty_calibration_folder_leaves_no_set(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    root = tmp_path / "calibration"
    code, _, err = run_cli(
        capsys, "calib", "import", str(tmp_path / "empty"), "--name", "e", "--root", str(root)
    )
    assert code != 0 and "error:" in err and "hint:" in err
    assert not (root / "e").exists()


@pytest.mark.slow
def test_tampered_calibration_image_stops_before_build(tmp_path, capsys, shapes_root, trained):
    root = tmp_path / "calibration"
    code, _, _ = run_cli(
        capsys,
        "calib",
        "import",
        str(shapes_root),
        "--name",
        "c",
        "--split",
        "calib",
        "--count",
        "16",
        "--root",
        str(root),
    )
    assert code == 0
    victim = sorted((root / "c" / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes() + b"tampered")
    code, _, err = run_cli(
        capsys, *deploy_args(tmp_path, shapes_root, "--recipe", "none", "--calib", "c", "--run-id", "t")
    )
    assert code == 1 and victim.name in err
    run = tmp_path / "runs" / "t"
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "calibration"
    assert victim.name in record["error"]["message"]
    assert not (run / "artifact").exists() and not (run / "model_int8.onnx").exists()
    assert (run / "report.md").exists()  # the report says where it stopped


def test_read_only_output_folder(tmp_path, capsys, shapes_root):
    ro = tmp_path / "ro"
    ro.mkdir()
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode
    ):
        pytest.skip(reason=NO_IMMUTABLE_FOLDERS)
    try:
        code, _, err = run_cli(
            capsys,
            "deploy",
            "--quiet",
            "--data",
            str(shapes_root),
            "--out",
            str(ro / "runs"),
            "--calib-root",
            str(tmp_path / "c"),
        )
        assert code == 1 and "cannot write" in err and "hint:" in err
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--max-map-drop", "nan", "finite number >= 0"),
        ("--max-drop", "-1", "finite number >= 0"),
        ("--max-p99-ms", "0", "finite number > 0"),
        ("--epochs-scale", "inf", "finite number > 0"),
    ],
)
def test_numeric_options_refuse_nan_and_out_of_range(capsys, flag, value, words):
    with pytest.raises(SystemExit) as info:
        main(["deploy", "--dry-run", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and words in err


def test_doctor_names_the_extra_to_install(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and "pip install 'edgekit[mnn]'" in out and "pip install 'edgekit[tflite]'" in out


def test_dry_run_resolves_the_calibration_set(tmp_path, capsys, shapes_root):
    code, out, err = run_cli(
        capsys, *deploy_args(tmp_path, shapes_root, "--calib", "no-such-set", "--dry-run")
    )
    assert code == 1 and "no-such-set" in err and "hint:" in err
    assert not (tmp_path / "runs").exists()


def test_missing_data_yaml_leaves_no_run_folder(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = run_cli(
        capsys, "deploy", "--quiet", "--data", str(empty), "--out", str(tmp_path / "runs"), "--recipe", "none"
    )
    assert code == 1 and "data.yaml" in err
    assert not any((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else True


def test_an_interrupted_stage_is_recorded_as_interrupted(tmp_path):
    from edgekit.report.record import RunRecord
    from edgekit.stages.context import RunContext, stage

    record = RunRecord.new("r", [], {"name": "local"}, {})
    ctx = RunContext.__new__(RunContext)
    ctx.record, ctx.run_dir = record, tmp_path
    with pytest.raises(KeyboardInterrupt), stage(ctx, "build"):
        raise KeyboardInterrupt
    saved = json.loads((tmp_path / "record.json").read_text())
    assert saved["status"] == "interrupted" and saved["failed_stage"] == "build"
