"""The one preprocessing used by training-eval, calibration and (through ``artifact.json``) the runner.

The device-side runners never decode images: the host turns images into input tensors with
:func:`preprocess_image` and pushes the tensors, so every backend sees bit-identical inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class PreprocessSpec(BaseModel):
    """How an image becomes an input tensor.

    ``value = (pixel / 255 - mean) / std`` after resizing, in ``channel_order`` and ``layout``.

    Attributes:
        input_size: Square network input side in pixels.
        resize: ``letterbox`` keeps aspect ratio and pads with ``pad_value``; ``stretch`` does not.
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel std on the 0..1 scale.
        channel_order: ``RGB`` or ``BGR``.
        layout: ``NCHW`` or ``NHWC``.
        pad_value: Grey level (0..255) of letterbox padding.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(160, ge=16, le=4096)
    resize: Literal["letterbox", "stretch"] = "letterbox"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(114, ge=0, le=255)

    def input_shape(self) -> list[int]:
        """Return the batch-1 input shape in this spec's layout."""
        s = self.input_size
        return [1, 3, s, s] if self.layout == "NCHW" else [1, s, s, 3]

    def differences(self, other: PreprocessSpec) -> list[str]:
        """Return ``field: mine != theirs`` for every field that differs."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [f"{k}: {mine[k]} != {theirs[k]}" for k in mine if mine[k] != theirs[k]]


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the network input (to map boxes back)."""

    scale: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from network-input pixels to original-image pixels (clipped)."""
        out = boxes_xyxy.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_h)
        return out


def load_image(path: str | Path, convert: bool = True) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 RGB array.

    Grayscale and RGBA images are converted to RGB with a warning (``convert=True``) or refused.

    Raises:
        DataError: The file is missing, unreadable, or not RGB and ``convert`` is False.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode != "RGB":
                if not convert:
                    raise DataError(f"{path} is {mode}, not RGB", "convert it to RGB or allow conversion")
                warnings.warn(f"{path.name}: {mode} image converted to RGB", stacklevel=2)
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}", "check the path") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}", "the file is corrupt or not an image; remove or replace it"
        ) from exc


def letterbox(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (HxWx3 uint8) to the spec's square input; return it and the mapping."""
    from PIL import Image

    h, w = image.shape[:2]
    size = spec.input_size
    if spec.resize == "stretch":
        resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        # Stretch has two scales; Letterbox carries one, so stretch only supports square sources exactly.
        return resized, Letterbox(size / max(h, w), 0.0, 0.0, w, h)
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.full((size, size, 3), spec.pad_value, dtype=np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    if (nw, nh) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    canvas[py : py + nh, px : px + nw] = image
    return canvas, Letterbox(scale, float(px), float(py), w, h)


def to_tensor(canvas: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Normalise a letterboxed ``HxWx3`` uint8 RGB canvas into a batch-1 float32 tensor."""
    x = canvas.astype(np.float32) / 255.0
    if spec.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def preprocess_image(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """Image array → (batch-1 input tensor, letterbox mapping). The single preprocessing path."""
    canvas, lb = letterbox(image, spec)
    return to_tensor(canvas, spec), lb


def preprocess_file(path: str | Path, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """Read an image file and preprocess it (see :func:`preprocess_image`)."""
    return preprocess_image(load_image(path), spec)
