"""Fixtures for the calibration-set tests: small seeded image sets, a YOLO dataset, a tiny conv ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data.preprocess import PreprocessSpec

SPEC = PreprocessSpec(input_size=64)


def write_image(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> Path:
    """A seeded noisy image with a bright rectangle, saved in ``mode`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    arr[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """24 RGB images, 64..200 px, png and jpg, one in a subfolder."""
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(24):
        w, h = (int(v) for v in rng.integers(64, 201, size=2))
        sub = folder / "sub" if i == 5 else folder
        write_image(sub / f"img{i:02d}.{'jpg' if i % 3 == 0 else 'png'}", w, h, seed=i)
    return folder


def write_yolo_dataset(root: Path, counts: dict[int, int], split: str = "calib", size: int = 96) -> Path:
    """A YOLO dataset with ``counts[c]`` images holding one box of class ``c`` each (sizes vary)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: [circle, square, triangle]\n")
    idx = 0
    for cls, n in counts.items():
        for k in range(n):
            write_image(root / "images" / split / f"im{idx:03d}.png", size, size, seed=1000 + idx)
            bw = (0.15, 0.45, 0.9)[k % 3]  # small / medium / large at 64 px input
            label = root / "labels" / split / f"im{idx:03d}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{cls} 0.5 0.5 {bw} {bw}\n")
            idx += 1
    return root


@pytest.fixture
def yolo_dataset(tmp_path: Path) -> Path:
    """Skewed: 20 circles, 20 squares, 1 triangle."""
    return write_yolo_dataset(tmp_path / "ds", {0: 20, 1: 20, 2: 1})


def tiny_conv_onnx(path: Path, size: int = 64) -> Path:
    """images [1,3,S,S] -> Conv(3->4) -> 'conv1_out' -> Relu -> Conv(4->2) -> 'out' (opset 13)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["conv1_out"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv1_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "w2"], ["out"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, size, size])],
        initializer=[w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
