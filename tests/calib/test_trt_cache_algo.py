"""The calibration-cache header names the calibrator that made the scales (method <-> --algo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.backends.tensorrt.cache import calibrator_for, method_for, read_trt_cache
from edgekit.core.errors import CalibrationError, ConfigError
from tests.calib.conftest import tiny_conv_onnx
from tests.calib.test_commands import imp, run


@pytest.mark.parametrize(
    ("method", "algo", "header"),
    [
        ("minmax", None, "MinMaxCalibration"),
        ("entropy", None, "EntropyCalibration2"),
        ("entropy", "EntropyCalibration", "EntropyCalibration"),
        ("minmax", "MinMaxCalibration", "MinMaxCalibration"),
    ],
)
def test_header_follows_the_method(method: str, algo: str | None, header: str) -> None:
    assert calibrator_for(method, algo) == header


@pytest.mark.parametrize(
    ("method", "algo", "words"),
    [
        ("minmax", "EntropyCalibration2", "--algo EntropyCalibration2 contradicts --method minmax"),
        ("entropy", "MinMaxCalibration", "--algo MinMaxCalibration contradicts --method entropy"),
        ("entropy", "LegacyCalibration", "contradicts --method entropy"),
        ("minmax", "Magic", "unknown TensorRT calibrator 'Magic'"),
        ("kl", None, "unknown calibration method 'kl'"),
    ],
)
def test_contradictions_are_errors(method: str, algo: str | None, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        calibrator_for(method, algo)


def test_percentile_is_refused_naming_what_can_be_exported() -> None:
    with pytest.raises(ConfigError, match="'percentile' cannot be exported") as info:
        calibrator_for("percentile")
    assert "--method minmax or entropy" in info.value.hint and "quantize_trt_qdq" in info.value.hint
    with pytest.raises(ConfigError, match="'percentile' cannot be exported"):
        calibrator_for("percentile", "LegacyCalibration")


def test_method_for_inverts_the_mapping() -> None:
    assert method_for("MinMaxCalibration") == "minmax"
    assert method_for("EntropyCalibration2") == "entropy"
    with pytest.raises(ConfigError, match="no calibration method that makes LegacyCalibration"):
        method_for("LegacyCalibration")


@pytest.fixture
def cli_set(image_folder: Path, tmp_path: Path) -> tuple[str, Path]:
    root = str(tmp_path / "calibration")
    assert imp(image_folder, "s", "64", root) == 0
    return root, tiny_conv_onnx(tmp_path / "m.onnx")


def _export(cli_set: tuple[str, Path], out: Path, *extra: str) -> str:
    root, onnx = cli_set
    argv = ["calib", "export", "s", "--format", "tensorrt", "--onnx", str(onnx), "--out", str(out)]
    assert run(*argv, "--root", root, *extra) == 0
    return (out / "calibration.cache").read_text().splitlines()[0]


def test_cli_header_follows_method_and_algo(
    cli_set: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _export(cli_set, tmp_path / "a", "--method", "minmax") == "TRT-8502-MinMaxCalibration"
    assert "trtexec --calib calibrates with EntropyCalibration2" in capsys.readouterr().out
    assert _export(cli_set, tmp_path / "b", "--method", "entropy") == "TRT-8502-EntropyCalibration2"
    # --algo alone picks the method whose scales it names.
    assert _export(cli_set, tmp_path / "c", "--algo", "MinMaxCalibration") == "TRT-8502-MinMaxCalibration"
    assert '"method": "minmax"' in (tmp_path / "c" / "calibration.json").read_text().replace("\n", " ")
    assert _export(cli_set, tmp_path / "d") == "TRT-8502-EntropyCalibration2"


def test_cli_contradiction_and_percentile_fail_before_writing(
    cli_set: tuple[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--algo EntropyCalibration2 contradicts --method minmax"):
        _export(cli_set, tmp_path / "x", "--method", "minmax", "--algo", "EntropyCalibration2")
    with pytest.raises(ConfigError, match="'percentile' cannot be exported"):
        _export(cli_set, tmp_path / "y", "--method", "percentile")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("hex8", ["7f800000", "ff800000", "7fc00000", "00000000", "bf800000"])
def test_reading_rejects_inf_nan_zero_and_negative_scales(tmp_path: Path, hex8: str) -> None:
    path = tmp_path / "calib.cache"
    path.write_text(f"TRT-8502-MinMaxCalibration\nimages: 3c010a14\n/conv/Conv_output_0: {hex8}\n")
    with pytest.raises(CalibrationError, match=r"calib.cache:3: tensor '/conv/Conv_output_0' has scale"):
        read_trt_cache(path)
