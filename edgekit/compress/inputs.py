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


def foreign_context(
    path: Path, data_root: Path | None, images: Path | None, workdir: Path, epochs_scale: float,
    progress: bool, head: str | None = None,
):  # fmt: skip
    """A user's ONNX detector and its data: ``(model, context, metric)`` for ``edgekit compress``.

    With ``data_root`` (labels) the metric is mAP on its val split, and the classes must match; otherwise
    the images (``images``, else the built-in set's) train the distillation and the held-back ones, labelled
    by the FP32 model's own detections, measure teacher agreement.

    Raises:
        ConfigError: ``data_root``'s classes differ from the model's.
        ModelError / DataError: see :func:`edgekit.models.foreign.load_foreign`, :func:`folder_splits`.
    """
    from edgekit.compress.context import CompressContext
    from edgekit.compress.finetune import labelled_detection_weight
    from edgekit.core.errors import ConfigError
    from edgekit.data.dataset import YoloDataset
    from edgekit.data.unlabelled import folder_splits, teacher_labelled
    from edgekit.models.foreign import load_foreign, static_proto
    from edgekit.models.train import InMemorySplit, torch_candidates
    from edgekit.models.user import inspect_onnx

    det = inspect_onnx(path, head=head)
    model, spec = load_foreign(static_proto(det), det.head).eval(), det.preprocess
    if images is not None:
        train_part, held = folder_splits(images)
        train, val = InMemorySplit(train_part, spec), InMemorySplit(held, spec)
    else:
        root = data_root
        if root is None:
            from edgekit.data.shapes import ShapesConfig, builtin_dataset
            from edgekit.models.zoo import cache_dir

            root = builtin_dataset(cache_dir(), ShapesConfig(image_size=spec.input_size), progress=progress)
        train, val = (InMemorySplit(YoloDataset(root, s), spec) for s in ("train", "val"))
    metric = "map" if data_root is not None else "teacher_agreement"
    if metric == "map" and val.num_classes != det.num_classes:
        raise ConfigError(
            f"{path} predicts {det.num_classes} classes but {data_root} has {val.num_classes}",
            "give --data with the model's classes, or leave --data out to measure teacher agreement",
        )
    if metric == "teacher_agreement":
        val = teacher_labelled(val, torch_candidates(model, val), det.num_classes)
    detection = labelled_detection_weight(model, metric == "map")
    ctx = CompressContext(
        train, val, spec, workdir, epochs_scale=epochs_scale, progress=progress, detection=detection
    )
    return model, ctx, metric
