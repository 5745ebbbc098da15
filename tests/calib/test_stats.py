from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.calib import CalibrationSet, import_set
from edgekit.calib.stats import contact_sheet, diff, show
from tests.calib.conftest import SPEC, write_image


def test_show_counts_sizes_and_channel_stats(image_folder: Path, tmp_path: Path) -> None:
    cs = import_set(image_folder, "s", root=tmp_path / "c", spec=SPEC).set
    info = show(cs)
    widths = [e.width for e in cs.manifest.images]
    assert info["count"] == 24 and info["versions"] == [1]
    assert info["width"] == {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)}
    stacked = np.concatenate(list(cs.arrays()))
    np.testing.assert_allclose(info["channel_mean"], stacked.mean(axis=(0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(info["channel_std"], stacked.std(axis=(0, 2, 3)), atol=1e-5)
    assert "labels" not in info


def test_show_label_histograms(yolo_dataset: Path, tmp_path: Path) -> None:
    cs = import_set(yolo_dataset, "d", root=tmp_path / "c", spec=SPEC).set
    labels = show(cs, channel_stats=False)["labels"]
    assert labels["boxes_per_class"] == {"circle": 20, "square": 20, "triangle": 1}
    assert labels["images_per_class"] == {"circle": 20, "square": 20, "triangle": 1}
    # widths cycle 0.15/0.45/0.9 of a 96 px image -> 9.6, 28.8, 57.6 px at the 64 px input: only the
    # third of each class is medium (6 circles + 6 squares), the rest small
    assert labels["box_sizes"] == {"small": 29, "medium": 12, "large": 0}
    assert labels["background_images"] == 0


def test_contact_sheet(image_folder: Path, tmp_path: Path) -> None:
    cs = import_set(image_folder, "s", root=tmp_path / "c", spec=SPEC).set
    png = contact_sheet(cs, tmp_path / "sheet.png", cols=5, thumb=32)
    with Image.open(png) as im:
        assert im.size == (5 * 32, 5 * 32) and im.mode == "RGB"
        arr = np.asarray(im)
    assert arr[:32, :32].std() > 10, "first tile holds an image"
    assert (arr[4 * 32 :, 4 * 32 :] == 32).all(), "tile 25 of 24 stays background"


def test_diff_between_versions(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    import_set(image_folder, "s", root=root, spec=SPEC)
    removed = image_folder / "img02.png"
    removed_sha = next(
        e.sha256 for e in CalibrationSet.load("s", root=root).manifest.images if e.source_name == "img02.png"
    )
    removed.unlink()
    write_image(image_folder / "added.png", 80, 80, seed=77)
    import_set(image_folder, "s", root=root, spec=SPEC.model_copy(update={"pad_value": 0}))
    d = diff(CalibrationSet.load("s@v1", root=root), CalibrationSet.load("s@v2", root=root))
    assert [e["source_name"] for e in d["added"]] == ["added.png"]
    assert d["removed"] == [{"sha256": removed_sha, "source_name": "img02.png"}]
    assert d["kept"] == 23 and d["spec_changes"] == ["pad_value: 114 != 0"] and d["same"] is False
