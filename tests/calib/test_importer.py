import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.calib import CalibrationSet, import_set
from edgekit.core.errors import CalibrationError, ConfigError, DataError
from edgekit.core.files import sha256_file
from tests.calib.conftest import SPEC, write_image, write_yolo_dataset


def test_import_folder_writes_manifest_with_correct_hashes(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "calibration"
    res = import_set(image_folder, "site", root=root, spec=SPEC)
    cs = res.set
    assert res.new_version and cs.version == 1 and cs.count == 24
    manifest = json.loads((root / "site" / "manifest.json").read_text())
    assert manifest == json.loads((root / "site" / "versions" / "v1.json").read_text())
    sources = {p.relative_to(image_folder).as_posix(): p for p in image_folder.rglob("*.*")}
    for entry in manifest["images"]:
        src = sources[entry["source_name"]]
        assert entry["sha256"] == sha256_file(src) == sha256_file(root / "site" / entry["file"])
        assert entry["file"] == f"images/{entry['sha256'][:16]}{src.suffix}"
        assert entry["bytes"] == src.stat().st_size
    assert "sub/img05.png" in {e["source_name"] for e in manifest["images"]}
    assert manifest["preprocess"]["input_size"] == 64 and manifest["has_labels"] is False
    assert CalibrationSet.load("site", root=root).verify().sha256 == manifest["sha256"]


def test_reimport_same_keeps_version_changed_bumps(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "calibration"
    v1 = import_set(image_folder, "s", root=root, spec=SPEC).set
    again = import_set(image_folder, "s", root=root, spec=SPEC)
    assert not again.new_version and again.set.version == 1 and "unchanged, still v1" in again.summary()
    assert sorted(p.name for p in (root / "s" / "versions").iterdir()) == ["v1.json"]

    (image_folder / "img00.jpg").unlink()
    write_image(image_folder / "new.png", 90, 70, seed=999)
    v2 = import_set(image_folder, "s", root=root, spec=SPEC)
    assert v2.new_version and v2.set.version == 2 and v2.previous_version == 1
    assert v2.set.sha256 != v1.sha256

    old = CalibrationSet.load("s@v1", root=root).verify()  # old images still stored, old version still valid
    assert old.sha256 == v1.sha256 and old.count == 24
    assert CalibrationSet.load("s", root=root).verify().version == 2

    v3 = import_set(image_folder, "s", root=root, spec=SPEC.model_copy(update={"input_size": 96}))
    assert v3.set.version == 3, "a spec change alone is a new version"


def test_empty_folder_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    root = tmp_path / "calibration"
    with pytest.raises(CalibrationError, match=r"no images in .*empty"):
        import_set(tmp_path / "empty", "e", root=root, spec=SPEC)
    assert not (root / "e").exists()
    assert not root.exists() or list(root.iterdir()) == []


def test_corrupt_image_is_named_and_leaves_no_set(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    root = tmp_path / "calibration"
    with pytest.raises(DataError, match=r"broken\.png") as info:
        import_set(image_folder, "c", root=root, spec=SPEC)
    assert "--skip-bad" in info.value.hint
    assert list(root.iterdir()) == [], "no set folder and no staging folder left behind"


def test_corrupt_image_in_update_leaves_current_version_untouched(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "calibration"
    import_set(image_folder, "c", root=root, spec=SPEC)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        import_set(image_folder, "c", root=root, spec=SPEC)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
    CalibrationSet.load("c", root=root).verify()


def test_skip_bad_records_what_was_skipped(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "broken.png").write_bytes(b"nope")
    cs = import_set(image_folder, "k", root=tmp_path / "c", spec=SPEC, skip_bad=True).set
    assert cs.count == 24
    assert any(w.startswith("broken.png: skipped, unreadable") for w in cs.manifest.warnings)


def test_gray_and_rgba_converted_with_warning_small_images_recorded(tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    write_image(src / "gray.png", 120, 100, seed=1, mode="L")
    write_image(src / "alpha.png", 130, 90, seed=2, mode="RGBA")
    write_image(src / "tiny.png", 40, 30, seed=3)
    cs = import_set(src, "m", root=tmp_path / "c", spec=SPEC).set
    notes = cs.manifest.warnings
    assert any(w.startswith("gray.png: L image, converted to RGB") for w in notes)
    assert any(w.startswith("alpha.png: RGBA image, converted to RGB") for w in notes)
    assert any(w.startswith("tiny.png: 40x30 is smaller than the 64px input") for w in notes)
    modes = {e.source_name: e.mode for e in cs.manifest.images}
    assert modes == {"gray.png": "L", "alpha.png": "RGBA", "tiny.png": "RGB"}
    arrays = list(cs.arrays())
    assert all(a.shape == (1, 3, 64, 64) and a.dtype == np.float32 for a in arrays)


def test_duplicates_reported_and_stored_once(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "copy_of_1.png").write_bytes((image_folder / "img01.png").read_bytes())
    cs = import_set(image_folder, "d", root=tmp_path / "c", spec=SPEC).set
    assert cs.count == 24
    assert len(list((cs.dir / "images").iterdir())) == 24
    dup = [w for w in cs.manifest.warnings if "duplicate of" in w]
    assert len(dup) == 1 and "copy_of_1.png" in dup[0] and "img01.png" in dup[0]


def test_count_larger_than_source_is_an_error(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="asked for 50 images but .* has only 24"):
        import_set(image_folder, "x", root=tmp_path / "c", spec=SPEC, count=50)
    assert not (tmp_path / "c" / "x").exists()


def test_list_file_source_paths_relative_to_list(image_folder: Path, tmp_path: Path) -> None:
    listing = image_folder / "picked.txt"
    listing.write_text("# my picks\nimg01.png\n\nsub/img05.png\n")
    cs = import_set(listing, "l", root=tmp_path / "c", spec=SPEC).set
    assert sorted(e.source_name for e in cs.manifest.images) == ["img01.png", "sub/img05.png"]
    assert cs.manifest.source.kind == "list"
    listing.write_text("missing.png\n")
    with pytest.raises(DataError, match=r"picked\.txt:1: image not found: missing\.png"):
        import_set(listing, "l2", root=tmp_path / "c", spec=SPEC)


def test_dataset_import_copies_labels(yolo_dataset: Path, tmp_path: Path) -> None:
    cs = import_set(yolo_dataset, "ds", root=tmp_path / "c", spec=SPEC).set
    assert cs.manifest.source.kind == "dataset" and cs.manifest.has_labels
    assert cs.manifest.class_names == ["circle", "square", "triangle"]
    entry = next(e for e in cs.manifest.images if e.source_name == "images/calib/im040.png")
    assert (cs.dir / entry.label_file).read_text() == (yolo_dataset / "labels/calib/im040.txt").read_text()
    assert entry.label_sha256 == sha256_file(cs.dir / entry.label_file)


def test_stratified_covers_every_class_where_random_does_not(yolo_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    strat = import_set(yolo_dataset, "st", root=root, spec=SPEC, count=4, strategy="stratified").set
    rand = import_set(yolo_dataset, "rn", root=root, spec=SPEC, count=4, strategy="random").set

    def classes(cs: CalibrationSet) -> set[int]:
        return {int((cs.dir / e.label_file).read_text().split()[0]) for e in cs.manifest.images}

    assert classes(strat) == {0, 1, 2}
    # 1 triangle in 41 images: seed 0 draws 4 images without it (deterministic permutation).
    assert 2 not in classes(rand)
    first = strat.manifest.images[0].source_name
    assert first == "images/calib/im040.png", "the rarest class comes first"


def test_stratified_without_labels_is_a_config_error(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stratified sampling needs labels"):
        import_set(image_folder, "x", root=tmp_path / "c", spec=SPEC, strategy="stratified")


def test_stratified_balances_box_sizes_within_a_class(tmp_path: Path) -> None:
    ds = write_yolo_dataset(tmp_path / "one", {0: 12})
    cs = import_set(ds, "sz", root=tmp_path / "c", spec=SPEC, count=2, strategy="stratified").set
    widths = sorted(float((cs.dir / e.label_file).read_text().split()[3]) for e in cs.manifest.images)
    assert widths[0] < 0.5 < widths[1], f"one small and one medium box expected, got widths {widths}"


def test_bad_name_is_refused(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="invalid calibration set name"):
        import_set(image_folder, "a/b", root=tmp_path / "c", spec=SPEC)
