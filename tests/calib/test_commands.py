import argparse
import json
from pathlib import Path

import pytest

from edgekit.calib import CalibrationSet
from edgekit.cli.calib import add_parser
from edgekit.core.errors import CalibrationError, ConfigError
from tests.calib.conftest import tiny_conv_onnx


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def imp(src: Path, name: str, size: str, root: str) -> int:
    common = ("--root", root, "--no-progress")
    return run("calib", "import", str(src), "--name", name, "--input-size", size, *common)


def run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_import_list_show_verify(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = str(tmp_path / "calibration")
    assert (
        run(
            "calib",
            "import",
            str(image_folder),
            "--name",
            "site",
            "--input-size",
            "64",
            "--count",
            "10",
            "--root",
            root,
            "--no-progress",
        )
        == 0
    )
    out = capsys.readouterr().out
    cs = CalibrationSet.load("site", root=root)
    assert f"site: wrote v1, 10 images, sha256 {cs.sha256[:12]}" in out

    assert run("calib", "list", "--root", root) == 0
    out = capsys.readouterr().out
    assert "site" in out and "v1" in out and cs.sha256[:12] in out and "10" in out

    assert run("calib", "show", "site@v1", "--root", root, "--sheet", str(tmp_path / "s.png")) == 0
    out = capsys.readouterr().out
    assert "site v1" in out and "10 images" in out and "64px letterbox" in out
    assert (tmp_path / "s.png").is_file()

    assert run("calib", "show", "site", "--json", "--root", root) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == cs.sha256

    assert run("calib", "verify", "site", "--root", root) == 0
    assert f"ok: site v1, 10 images, sha256 {cs.sha256} verified" in capsys.readouterr().out


def test_verify_failure_raises_for_the_main_cli(image_folder: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "calibration")
    imp(image_folder, "s", "64", root)
    victim = CalibrationSet.load("s", root=root).manifest.images[0].file
    (Path(root) / "s" / victim).unlink()
    with pytest.raises(CalibrationError, match=f"{victim}: missing"):
        run("calib", "verify", "s", "--root", root)


def test_diff_and_export(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = str(tmp_path / "calibration")
    imp(image_folder, "s", "64", root)
    imp(image_folder, "s", "96", root)
    capsys.readouterr()
    assert run("calib", "diff", "s@v1", "s@v2", "--root", root) == 0
    assert "spec input_size: 64 != 96" in capsys.readouterr().out

    onnx = tiny_conv_onnx(tmp_path / "m.onnx")
    out = tmp_path / "trt"
    assert (
        run(
            "calib",
            "export",
            "s@v1",
            "--format",
            "tensorrt",
            "--onnx",
            str(onnx),
            "--out",
            str(out),
            "--trt-version",
            "8.6.1",
            "--root",
            root,
        )
        == 0
    )
    assert (out / "calibration.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")
    with pytest.raises(ConfigError, match="--onnx is only used by --format tensorrt"):
        run(
            "calib",
            "export",
            "s",
            "--format",
            "mnn",
            "--onnx",
            str(onnx),
            "--out",
            str(tmp_path / "x"),
            "--root",
            root,
        )


def test_help_teaches(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["calib", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "edgekit calib export shapes --format tensorrt" in text
