import pytest

from edgekit.cli import build_parser, main


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["deploy", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "edgekit deploy --target local" in out and "--max-map-drop" in out and "--dry-run" in out


def test_every_public_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"deploy", "compress", "build", "bench", "predict", "calib", "report", "targets", "doctor"} <= set(
        sub.choices
    )


def test_targets_and_doctor_list_backends_with_status(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "jetson-xavier-nx" in out and "stm32f4-tflm" in out and "ready" in out
    assert "not built yet" not in out  # every backend of this version is built
    assert main(["doctor"]) == 0
    assert "onnxruntime" in capsys.readouterr().out


def test_report_of_a_missing_run_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "record.json" in err


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["deploy", "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert '"backend": "onnxruntime"' in out and '"quantize"' in out
    assert not (tmp_path / "runs").exists()
