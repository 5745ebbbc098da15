import struct
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.tensorrt.cache import decode_scale, read_trt_cache, version_tag, write_trt_cache
from edgekit.core.errors import CalibrationError, ConfigError


def test_known_sample_decodes_like_tensorrt() -> None:
    # From a TensorRT 6 cache (device-benchmarking.md §2.3): data_0 scale printed by NVIDIA's tooling.
    assert decode_scale("3caa54fc") == pytest.approx(0.02079247683286667, abs=0)
    assert decode_scale("3f800000") == 1.0


def test_round_trip_is_exact_in_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(1e-6, 10, 50), [1e-40, 3.4e38, 1 / 127]]).astype(np.float32)
    names = [f"/model.{i}/conv/Conv_output_0" for i in range(len(values))]
    names[0], names[1] = "(Unnamed Layer* 174) [Constant]_output", "odd: name: with colons"
    scales = {n: float(v) for n, v in zip(names, values, strict=True)}
    path = write_trt_cache(scales, tmp_path / "calib.cache")
    header, back = read_trt_cache(path)
    assert header == "TRT-8502-EntropyCalibration2"
    assert list(back) == names
    assert all(np.float32(back[n]) == np.float32(scales[n]) for n in names)
    lines = path.read_text().splitlines()
    assert lines[1] == f"(Unnamed Layer* 174) [Constant]_output: {struct.pack('>f', values[0]).hex()}"


def test_header_version_and_algo(tmp_path: Path) -> None:
    path = write_trt_cache({"x": 0.5}, tmp_path / "c", version="10.3.0", algo="MinMaxCalibration")
    assert path.read_text().splitlines()[0] == "TRT-100300-MinMaxCalibration"
    assert version_tag("8.5.2") == "8502" and version_tag(8502) == "8502"
    with pytest.raises(ConfigError, match="unknown TensorRT calibrator 'Magic'"):
        write_trt_cache({"x": 0.5}, tmp_path / "d", algo="Magic")


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan"), -1.0, 1e-50])
def test_bad_scales_are_rejected_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    with pytest.raises(CalibrationError, match="tensor 'conv3_out' has scale"):
        write_trt_cache({"ok": 0.1, "conv3_out": bad}, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_reading_a_failed_calibration_cache_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("TRT-8502-EntropyCalibration2\nimages: 3c010a14\nlayer one: 7f800000\n")
    with pytest.raises(CalibrationError, match=r"c:3: tensor 'layer one' has scale inf"):
        read_trt_cache(path)
    path.write_text("TRT-8502-EntropyCalibration2\nimages 3c010a14\n")
    with pytest.raises(CalibrationError, match=r"c:2: malformed line"):
        read_trt_cache(path)
    path.write_text("not a cache\n")
    with pytest.raises(CalibrationError, match="not a TensorRT calibration cache"):
        read_trt_cache(path)
