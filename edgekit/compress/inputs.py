"""The inputs of a compression run outside a deploy: the model to compress and its data context."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgekit.core.errors import ModelError


def load_model(spec: str, data_root: Path, progress: bool = True) -> nn.Module:
    """``builtin`` -> the cached reference detector; a path -> a module or an edgekit checkpoint dict.

    Raises:
        ModelError: The file is missing or holds something that is not an edgekit detector.
    """
    if spec == "builtin":
        from edgekit.models.train import TrainConfig
        from edgekit.models.zoo import reference_detector

        return reference_detector(data_root, TrainConfig(), progress=progress).model
    path = Path(spec)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", 'pass "builtin" or a .pt saved by edgekit')
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, dict) and {"config", "state_dict"} <= obj.keys():
        from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

        model = TinyYolo(TinyYoloConfig(**obj["config"]))
        model.load_state_dict(obj["state_dict"])
        return model.eval()
    raise ModelError(
        f"{path} is not a model saved by edgekit", "save the whole module with torch.save(model, path)"
    )


def build_context(data_root: Path, workdir: Path, epochs_scale: float, progress: bool):
    """Train/val splits of ``data_root`` letterboxed at the reference input size."""
    from edgekit.compress.context import CompressContext
    from edgekit.data.dataset import YoloDataset
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.models.train import InMemorySplit

    spec = PreprocessSpec(input_size=160)
    return CompressContext(
        train=InMemorySplit(YoloDataset(data_root, "train"), spec),
        val=InMemorySplit(YoloDataset(data_root, "val"), spec),
        spec=spec,
        workdir=workdir,
        epochs_scale=epochs_scale,
        progress=progress,
    )
