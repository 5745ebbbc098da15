"""``edgekit predict``: a user's Ultralytics-style ONNX (v5 and v8 layouts) built, run and drawn."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgekit.backends.contract.base import Artifact
from edgekit.cli.predict import add_parser
from edgekit.core.errors import ConfigError, DataError, EdgekitError
from edgekit.core.registry import get_backend
from edgekit.data.dataset import YoloDataset
from edgekit.export.onnx import export_onnx
from edgekit.models.user import detect_head, inspect_onnx
from edgekit.predict import format_table, predict, to_json

SIZE = 160


class YoloV8Layout(nn.Module):
    """The same detector with a YOLOv8-style output: objectness folded into class scores, ``[1, 4+nc, N]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        rows = self.model(x)  # [1, N, 5 + nc]
        scores = rows[..., 5:] * rows[..., 4:5]
        return torch.cat([rows[..., :4], scores], -1).transpose(1, 2)


class YoloV8Dfl(nn.Module):
    """The detector with an Ultralytics-style v8 DFL head, output ``[1, 4+nc, N]``.

    Per box edge a 16-bin distribution, softmax over the bins, and the fixed ``Conv(arange(16))`` that
    takes its expectation.

    The distributions are made from the detector's own boxes (two-hot on the bin grid, so the expectation
    gives the box back to ~0.1 px): the graph is a real DFL head, the detections stay the trained ones.
    """

    REG = 16

    def __init__(self, model: nn.Module, size: int = SIZE) -> None:
        super().__init__()
        self.model = model
        self.step = size / (self.REG - 1)
        self.dfl = nn.Conv2d(self.REG, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.REG, dtype=torch.float).view(1, self.REG, 1, 1)

    def forward(self, x):
        rows = self.model(x)  # [1, N, 5 + nc]: cx, cy, w, h in pixels
        edges = torch.cat([rows[..., :2] - rows[..., 2:4] / 2, rows[..., :2] + rows[..., 2:4] / 2], -1)
        bins = (edges / self.step).clamp(0, self.REG - 1)
        k = torch.arange(self.REG, dtype=torch.float)
        logits = torch.log(torch.relu(1 - (bins[..., None] - k).abs()) + 1e-4)  # [1, N, 4, 16]
        b, n = logits.shape[:2]
        p = logits.permute(0, 2, 3, 1).reshape(b, 4 * self.REG, n)  # the raw head's layout
        p = p.view(b, 4, self.REG, n).transpose(2, 1).softmax(1)  # Ultralytics' DFL, op for op
        dist = self.dfl(p).view(b, 4, n) * self.step
        box = torch.cat([(dist[:, :2] + dist[:, 2:]) / 2, dist[:, 2:] - dist[:, :2]], 1)
        return torch.cat([box, (rows[..., 5:] * rows[..., 4:5]).transpose(1, 2)], 1)


@pytest.fixture(scope="module")
def artifacts(trained, shapes_root, tmp_path_factory):
    """onnxruntime fp32 artifacts of the reference detector exported in both Ultralytics layouts."""
    import onnx

    names = YoloDataset(shapes_root, "val").names
    out = tmp_path_factory.mktemp("predict")
    v5 = export_onnx(trained.model, (1, 3, SIZE, SIZE), out / "v5.onnx")
    v8 = export_onnx(YoloV8Layout(trained.model), (1, 3, SIZE, SIZE), out / "v8.onnx")
    proto = onnx.load(str(v8))
    proto.metadata_props.add(key="names", value=str(dict(enumerate(names))))  # as Ultralytics writes it
    onnx.save(proto, str(v8))
    dfl = export_onnx(YoloV8Dfl(trained.model), (1, 3, SIZE, SIZE), out / "v8dfl.onnx")
    dets = {
        "yolov5": inspect_onnx(v5),
        "yolov8": inspect_onnx(v8),
        "yolov8-dfl": inspect_onnx(dfl, head="yolov8"),
    }
    assert dets["yolov8"].class_names == names and dets["yolov5"].class_names[0] == "class0"
    backend = get_backend("onnxruntime")
    return {
        head: backend.build(det.path, det.build_options(threads=1), out / f"art-{head}").dir
        for head, det in dets.items()
    }


@pytest.fixture(scope="module")
def val_images(shapes_root) -> list[Path]:
    return sorted((shapes_root / "images" / "val").glob("*.png"))[:6]


def test_images_are_run_in_chunks_with_the_same_result(artifacts, val_images, monkeypatch):
    import edgekit.predict as predict_module

    whole = predict(artifacts["yolov5"], val_images[:5], conf=0.1)
    monkeypatch.setattr(predict_module, "CHUNK", 2)
    chunked = predict(artifacts["yolov5"], val_images[:5], conf=0.1)
    assert [r.to_dict() for r in chunked] == [r.to_dict() for r in whole]


def test_heads_are_detected_from_the_output_shapes(artifacts):
    for name, folder in artifacts.items():
        head = name.split("-")[0]
        out = Artifact.load(folder).meta["output"]
        assert (detect_head(out["shape"]), out["head"], out["num_classes"]) == (head, head, 6)
    assert Artifact.load(artifacts["yolov8"]).meta["output"]["shape"] == [1, 10, 500]


def test_v5_and_v8_layouts_give_the_same_detections(artifacts, val_images, shapes_root):
    names = YoloDataset(shapes_root, "val").names
    v5 = predict(artifacts["yolov5"], val_images, conf=0.1)
    v8 = predict(artifacts["yolov8"], val_images, conf=0.1)
    assert sum(len(r.detections) for r in v5) >= len(val_images)
    for a, b in zip(v5, v8, strict=True):
        assert (a.image, a.width, a.height) == (b.image, b.width, b.height)
        assert [d.class_id for d in a.detections] == [d.class_id for d in b.detections]
        if a.detections:
            np.testing.assert_allclose(
                [d.box for d in a.detections], [d.box for d in b.detections], atol=1e-3
            )
            np.testing.assert_allclose(
                [d.score for d in a.detections], [d.score for d in b.detections], atol=1e-5
            )
        assert [d.class_name for d in b.detections] == [names[d.class_id] for d in b.detections]
        assert [d.class_name for d in a.detections] == [f"class{d.class_id}" for d in a.detections]


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_boxes_are_in_original_image_pixels(artifacts, shapes_root, tmp_path):
    """A 240x160 copy of a val image: the best detection overlaps the rescaled ground truth."""
    ds = YoloDataset(shapes_root, "val")
    best = None
    for i in range(12):
        sample = ds.sample(i)
        path = tmp_path / f"wide_{i}.png"
        Image.open(sample.image_path).resize((240, 160), Image.BILINEAR).save(path)
        (result,) = predict(artifacts["yolov8"], [path], conf=0.3)
        assert (result.width, result.height) == (240, 160)
        if result.detections and (best is None or result.detections[0].score > best[0].score):
            gt = sample.boxes * np.array([240 / sample.width, 160 / sample.height] * 2)
            best = (result.detections[0], gt, sample.classes)
    assert best is not None, "the reference detector found nothing at conf 0.3 in 12 images"
    det, gt, classes = best
    ious = [_iou(det.box, g) for g in gt]
    k = int(np.argmax(ious))
    assert ious[k] > 0.5 and int(classes[k]) == det.class_id, (det, gt.tolist(), ious)
    # The same box in network-input pixels would end by x=160; here it spans the 240 px width.
    assert all(0 <= v <= 240 for v in det.box[::2]) and all(0 <= v <= 160 for v in det.box[1::2])


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgekit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_json_is_parseable_and_matches_the_api(artifacts, val_images, capsys):
    args = _cli(["predict", "--artifact", str(artifacts["yolov5"]), *map(str, val_images[:3]), "--json"])
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out)
    direct = predict(artifacts["yolov5"], val_images[:3])
    assert [img["image"] for img in payload["images"]] == [str(p) for p in val_images[:3]]
    assert [img["detections"] for img in payload["images"]] == [r.to_dict()["detections"] for r in direct]
    assert payload["images"][0]["width"] == 160


def test_cli_save_draws_pngs_and_prints_a_table(artifacts, val_images, tmp_path, capsys):
    out = tmp_path / "drawn"
    argv = ["predict", "--artifact", str(artifacts["yolov8"]), *map(str, val_images[:2]), "--save", str(out)]
    args = _cli([*argv, "--conf", "0.2"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["image", "class", "score", "x0", "y0", "x1", "y1"]
    results = predict(artifacts["yolov8"], val_images[:2], conf=0.2)
    assert table.strip() == format_table(results).strip()
    for src, result in zip(val_images[:2], results, strict=True):
        drawn = out / f"{src.stem}.png"
        with Image.open(drawn) as im:
            assert im.format == "PNG" and im.size == (160, 160)
            changed = np.any(np.asarray(im.convert("RGB")) != np.asarray(Image.open(src).convert("RGB")))
        assert changed == bool(result.detections)
    assert not list(out.glob(".*.tmp"))


def test_cli_help_has_examples():
    parser = argparse.ArgumentParser(prog="edgekit")
    sub = parser.add_subparsers()
    text = add_parser(sub).format_help()
    assert "examples:" in text and "edgekit predict --artifact" in text and "--save DIR" in text


def test_target_local_runs_and_ssh_targets_say_what_is_missing(artifacts, val_images, capsys):
    args = _cli(["predict", "--artifact", str(artifacts["yolov5"]), str(val_images[0]), "--target", "local"])
    pytest.importorskip("edgekit.core.config", reason="target loader not in this checkout")
    assert args.func(args) == 0
    assert "detection(s) in 1 image(s)" in capsys.readouterr().out
    jetson = _cli(
        ["predict", "--artifact", str(artifacts["yolov5"]), str(val_images[0]), "--target", "jetson"]
    )
    with pytest.raises(EdgekitError, match="the SSH agent is not built yet"):
        jetson.func(jetson)
    nowhere = _cli(
        ["predict", "--artifact", str(artifacts["yolov5"]), str(val_images[0]), "--target", "mars"]
    )
    with pytest.raises(ConfigError, match="unknown target 'mars'"):
        nowhere.func(nowhere)


def test_bad_images_are_data_errors(artifacts, tmp_path):
    with pytest.raises(DataError, match="no images"):
        predict(artifacts["yolov5"], [])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        predict(artifacts["yolov5"], [tmp_path / "broken.png"])
    with pytest.raises(DataError, match="image not found"):
        predict(artifacts["yolov5"], [tmp_path / "absent.png"])


def test_to_json_of_no_detections(tmp_path):
    from edgekit.predict import ImageDetections

    text = to_json([ImageDetections(tmp_path / "a.png", 10, 20)], artifact="art")
    assert json.loads(text) == {
        "artifact": "art",
        "images": [{"image": str(tmp_path / "a.png"), "width": 10, "height": 20, "detections": []}],
    }


def test_the_dfl_head_gives_the_same_detections_as_the_plain_head(artifacts, val_images):
    plain = predict(artifacts["yolov8"], val_images, conf=0.3)
    dfl = predict(artifacts["yolov8-dfl"], val_images, conf=0.3)
    for a, b in zip(plain, dfl, strict=True):
        assert [d.class_id for d in a.detections] == [d.class_id for d in b.detections]
        for d, e in zip(a.detections, b.detections, strict=True):
            assert _iou(d.box, e.box) > 0.97


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mnn", "ncnn"])
@pytest.mark.parametrize("model", ["yolov8", "yolov8-dfl"])
def test_user_v8_onnx_builds_at_int8_for_arm_runtimes_and_keeps_its_detections(
    artifacts, backend, model, val_images, shapes_root, tmp_path
):
    """A user's Ultralytics-style v8 ONNX (DFL head included) → `edgekit build` int8 → predict."""
    from edgekit.build import build_artifact
    from edgekit.calib import import_set

    import_set(shapes_root, "user", root=tmp_path / "calib", from_dataset=True, split="calib", count=32)
    v8 = Artifact.load(artifacts[model])
    art = build_artifact(
        backend, "int8", v8.path(), tmp_path / "art", calib="user", calib_root=tmp_path / "calib"
    )
    assert art.meta["output"]["head"] == "yolov8" and art.meta["int8_source"] == "calibration"
    assert art.meta["output"]["class_names"] == v8.meta["output"]["class_names"]
    ref = predict(v8.dir, val_images, conf=0.3)
    got = predict(art.dir, val_images, conf=0.2)  # INT8 scores move a little: look a bit lower
    found = total = 0
    for a, b in zip(ref, got, strict=True):
        for d in a.detections:
            total += 1
            found += any(e.class_id == d.class_id and _iou(d.box, e.box) >= 0.5 for e in b.detections)
    assert total >= len(val_images) and found >= 0.9 * total, (found, total)
