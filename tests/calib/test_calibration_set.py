import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.calib import CalibrationSet, import_set, parse_ref
from edgekit.core.errors import CalibrationError
from edgekit.data.preprocess import PreprocessSpec, preprocess_file
from tests.calib.conftest import SPEC, tiny_conv_onnx


@pytest.fixture
def calib(image_folder: Path, tmp_path: Path) -> CalibrationSet:
    return import_set(image_folder, "site", root=tmp_path / "calibration", spec=SPEC).set


def test_load_by_name_version_and_path(calib: CalibrationSet) -> None:
    root = calib.dir.parent
    assert CalibrationSet.load("site", root=root).ref() == calib.ref()
    assert CalibrationSet.load("site@v1", root=root).sha256 == calib.sha256
    assert CalibrationSet.load(calib.dir).name == "site"
    assert CalibrationSet.load(calib.dir / "manifest.json").version == 1
    assert calib.ref() == {"name": "site", "version": 1, "sha256": calib.sha256}
    assert parse_ref("a@v3") == ("a", 3) and parse_ref("a@3") == ("a", 3) and parse_ref("a") == ("a", None)


def test_load_errors_name_what_exists(calib: CalibrationSet) -> None:
    root = calib.dir.parent
    with pytest.raises(CalibrationError, match=r"no calibration set 'nope' .*sets there: site"):
        CalibrationSet.load("nope", root=root)
    with pytest.raises(CalibrationError, match=r"has no version 7 \(versions: v1\)"):
        CalibrationSet.load("site@v7", root=root)
    with pytest.raises(CalibrationError, match="bad version"):
        parse_ref("site@vx")


def test_verify_catches_tampered_image(calib: CalibrationSet) -> None:
    entry = calib.manifest.images[3]
    path = calib.dir / entry.file
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CalibrationError, match=rf"{entry.file}: changed") as info:
        calib.verify()
    assert "re-import" in info.value.hint


def test_verify_catches_missing_image(calib: CalibrationSet) -> None:
    entry = calib.manifest.images[0]
    (calib.dir / entry.file).unlink()
    with pytest.raises(CalibrationError, match=rf"{entry.file}: missing"):
        calib.verify()


def test_verify_catches_extra_file(calib: CalibrationSet) -> None:
    (calib.dir / "images" / "intruder.png").write_bytes(b"x")
    with pytest.raises(CalibrationError, match=r"images/intruder\.png: extra file"):
        calib.verify()


def test_verify_catches_edited_manifest(calib: CalibrationSet) -> None:
    path = calib.dir / "manifest.json"
    data = json.loads(path.read_text())
    data["images"] = data["images"][1:]
    data["count"] -= 1
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="recorded set sha256 does not match"):
        CalibrationSet.load(calib.dir).verify()


def test_empty_set_is_an_error(calib: CalibrationSet) -> None:
    empty = CalibrationSet(calib.dir, calib.manifest.model_copy(update={"images": [], "count": 0}))
    with pytest.raises(CalibrationError, match="is empty"):
        empty.verify()
    with pytest.raises(CalibrationError, match="is empty"):
        list(empty.arrays())


def test_one_set_serves_models_of_any_preprocessing(calib: CalibrationSet) -> None:
    """The images are the asset: a 96 px BGR model with a mean gets its own tensors from the same set."""
    other = PreprocessSpec(input_size=96, channel_order="BGR", mean=(0.5, 0.5, 0.5))
    arrays = list(calib.arrays(limit=3, spec=other))
    assert [a.shape for a in arrays] == [(1, 3, 96, 96)] * 3
    for arr, path in zip(arrays, calib.image_paths(3), strict=True):
        np.testing.assert_array_equal(arr, preprocess_file(path, other)[0])
    assert calib.spec.input_size == 64  # the set's own default is untouched
    reader = calib.as_ort_reader("images", limit=2, spec=other)
    assert reader.get_next()["images"].shape == (1, 3, 96, 96)


def test_arrays_equal_preprocess_file_exactly(calib: CalibrationSet) -> None:
    arrays = list(calib.arrays())
    assert len(arrays) == calib.count
    for arr, path in zip(arrays, calib.image_paths(), strict=True):
        np.testing.assert_array_equal(arr, preprocess_file(path, calib.spec)[0])
    assert len(list(calib.arrays(limit=5))) == 5


def test_arrays_refuse_a_tampered_set(calib: CalibrationSet) -> None:
    (calib.dir / calib.manifest.images[0].file).write_bytes(b"tampered")
    with pytest.raises(CalibrationError, match="failed verification"):
        next(iter(calib.arrays()))


def test_ort_reader_feeds_quantize_static(calib: CalibrationSet, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    fp32 = tiny_conv_onnx(tmp_path / "tiny.onnx")
    reader = calib.as_ort_reader("images", limit=8)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 8
    assert len(list(reader)) == 8 and reader.get_next() is None
    reader.rewind()
    first = reader.get_next()
    np.testing.assert_array_equal(first["images"], next(iter(calib.arrays())))
    reader.rewind()
    int8 = tmp_path / "tiny.int8.onnx"
    quantize_static(str(fp32), str(int8), reader, quant_format=QuantFormat.QDQ)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("Conv") == 2
    x = first["images"]
    ref = ort.InferenceSession(str(fp32)).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(int8)).run(None, {"images": x})[0]
    # int8 activations: error well under 5 % of the output range on a calibration sample
    assert np.abs(got - ref).max() < 0.05 * (ref.max() - ref.min())


def test_torch_batches(calib: CalibrationSet) -> None:
    torch = pytest.importorskip("torch", reason="torch not installed")
    batches = list(calib.torch_batches(batch_size=10))
    assert [tuple(b.shape) for b in batches] == [(10, 3, 64, 64), (10, 3, 64, 64), (4, 3, 64, 64)]
    assert batches[0].dtype == torch.float32
    np.testing.assert_array_equal(batches[1][0].numpy(), list(calib.arrays())[10][0])
    assert len(list(calib.torch_batches(batch_size=10, drop_last=True))) == 2
