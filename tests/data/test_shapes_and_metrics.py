import numpy as np
import pytest

from edgekit.core.errors import DataError
from edgekit.data.dataset import YoloDataset
from edgekit.data.metrics import coco_map
from edgekit.data.shapes import CLASSES, ShapesConfig, generate_shapes
from edgekit.runners.detcore import candidates, nms


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "hard"
    return generate_shapes(
        root, ShapesConfig(variant="hard", splits={"train": 12, "val": 6}, seed=3), progress=False
    )


def test_generated_set_is_a_valid_yolo_dataset(tiny_set):
    ds = YoloDataset(tiny_set, "train")
    assert ds.names == CLASSES["hard"] and len(ds) == 12
    boxes = np.concatenate([ds.sample(i).boxes for i in range(len(ds))])
    classes = np.concatenate([ds.sample(i).classes for i in range(len(ds))])
    assert len(boxes) >= 12 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 160 and classes.max() < 6
    # small objects: the hard variant has boxes under 20 px
    assert ((boxes[:, 2] - boxes[:, 0]) < 20).any()


def test_generation_is_seeded(tmp_path):
    cfg = ShapesConfig(variant="easy", splits={"val": 3}, seed=11)
    a, b = generate_shapes(tmp_path / "a", cfg, False), generate_shapes(tmp_path / "b", cfg, False)
    for name in ("images/val/val_00000.png", "labels/val/val_00002.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_generate_refuses_existing_folder_and_leaves_nothing_half_written(tmp_path):
    from edgekit.core.errors import EdgekitError

    cfg = ShapesConfig(variant="easy", splits={"val": 1})
    generate_shapes(tmp_path / "s", cfg, False)
    with pytest.raises(EdgekitError, match="already exists"):
        generate_shapes(tmp_path / "s", cfg, False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_map_is_one_for_perfect_detections_and_drops_for_shifted(tiny_set):
    ds = YoloDataset(tiny_set, "val")
    samples = list(ds)
    perfect = [np.c_[s.boxes, np.ones(len(s.boxes)), s.classes] for s in samples]
    assert coco_map(samples, perfect, 6) == {"map50": 1.0, "map50_95": 1.0}
    shifted = [np.c_[s.boxes + [3, 3, 3, 3], np.ones(len(s.boxes)), s.classes] for s in samples]
    m = coco_map(samples, shifted, 6)
    assert m["map50_95"] < 0.9 and m["map50"] > 0.5


def test_bad_label_line_names_file_and_line(tmp_path, tiny_set):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_set, root)
    label = root / "labels" / "val" / "val_00000.txt"
    label.write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"val_00000.txt:1"):
        YoloDataset(root, "val").sample(0)


def test_detcore_decodes_both_heads_identically_and_nms_is_class_aware():
    rng = np.random.default_rng(0)
    n, nc = 50, 3
    xywh = np.c_[rng.uniform(20, 140, (n, 2)), rng.uniform(5, 30, (n, 2))]
    obj, cls = rng.uniform(0, 1, (n, 1)), rng.uniform(0, 1, (n, nc))
    v5 = np.c_[xywh, obj, cls][None].astype(np.float32)
    v8 = np.c_[xywh, cls * obj].T[None].astype(np.float32)
    a, b = candidates(v5, "yolov5", 0.05), candidates(v8, "yolov8", 0.05)
    np.testing.assert_allclose(a, b, atol=1e-6)
    same = np.array([[0, 0, 10, 10, 0.9, 0], [1, 1, 11, 11, 0.8, 0], [1, 1, 11, 11, 0.7, 1]], np.float32)
    kept = nms(same, iou=0.5)
    assert kept[:, 4].tolist() == pytest.approx([0.9, 0.7])  # same-class overlap removed, other class kept
