import numpy as np
import pytest
from PIL import Image

from edgekit.core.errors import DataError
from edgekit.data.preprocess import PreprocessSpec, letterbox, load_image, preprocess_image, to_tensor


def test_letterbox_keeps_aspect_and_maps_boxes_back():
    spec = PreprocessSpec(input_size=160)
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 50:90] = 255  # a white box at x 50..90, y 40..60 in original pixels
    canvas, lb = letterbox(img, spec)
    assert canvas.shape == (160, 160, 3)
    assert lb.scale == pytest.approx(0.8) and lb.pad_x == 0 and lb.pad_y == 40
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    np.testing.assert_allclose(lb.to_original(box), [[50, 40, 90, 60]], atol=1.5)
    assert canvas[0, 0, 0] == spec.pad_value  # padding rows keep the pad grey


def test_to_tensor_layouts_and_normalisation():
    canvas = np.full((16, 16, 3), [255, 0, 51], np.uint8)
    nchw = to_tensor(canvas, PreprocessSpec(input_size=16))
    assert nchw.shape == (1, 3, 16, 16) and nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, :, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    spec = PreprocessSpec(
        input_size=16, layout="NHWC", channel_order="BGR", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    nhwc = to_tensor(canvas, spec)
    assert nhwc.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(nhwc[0, 0, 0], [(0.2 - 0.5) / 0.5, -1.0, 1.0], atol=1e-6)


def test_preprocess_is_deterministic():
    img = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    a, _ = preprocess_image(img, PreprocessSpec(input_size=64))
    b, _ = preprocess_image(img.copy(), PreprocessSpec(input_size=64))
    assert np.array_equal(a, b)


def test_load_image_converts_gray_with_warning_and_refuses_corrupt(tmp_path):
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="converted to RGB"):
        assert load_image(tmp_path / "g.png").shape == (8, 8, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png")
