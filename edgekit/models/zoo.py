"""The built-in reference detector: trained once per (data, architecture, schedule), then cached."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from edgekit.data.dataset import YoloDataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.fsutil import atomic_write_bytes, stable_hash
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
from edgekit.models.train import InMemorySplit, TrainConfig, evaluate, train


def cache_dir() -> Path:
    """Folder for generated data and trained checkpoints (``$EDGEKIT_CACHE`` or ``<repo>/.cache/edgekit``)."""
    env = os.environ.get("EDGEKIT_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "edgekit"


@dataclass
class TrainedModel:
    """A trained checkpoint and what it scored on the validation split."""

    model: TinyYolo
    path: Path
    key: str
    metrics: dict
    cached: bool


def reference_train_config(epochs_scale: float = 1.0) -> TrainConfig:
    """The schedule `edgekit deploy` trains the reference detector with (10 epochs, AdamW 3e-3)."""
    return TrainConfig(epochs=round(10.0 * epochs_scale, 4), lr=3e-3)


def dataset_key(root: Path) -> str:
    """Identity of a dataset for cache keys: its generator config, else its file list."""
    meta = yaml.safe_load((Path(root) / "data.yaml").read_text())
    if "generator" in meta:
        return stable_hash(meta["generator"])
    files = sorted(
        str(p.relative_to(root)) + str(p.stat().st_size) for p in Path(root).rglob("*") if p.is_file()
    )
    return stable_hash(files)


def reference_detector(
    root: Path,
    train_cfg: TrainConfig,
    width: float = 1.0,
    input_size: int = 160,
    progress: bool = True,
    cache: Path | None = None,
) -> TrainedModel:
    """Train (or load from the cache) the reference :class:`TinyYolo` on ``root``'s train split.

    Example:
        >>> trained = reference_detector(builtin_dataset(cache_dir()), TrainConfig())  # doctest: +SKIP
    """
    train_ds = YoloDataset(root, "train")
    model_cfg = TinyYoloConfig(num_classes=train_ds.num_classes, input_size=input_size, width=width)
    key = stable_hash({"data": dataset_key(root), "model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    path = (cache or cache_dir()) / "models" / f"tinyyolo-{key}.pt"
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = TinyYolo(TinyYoloConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return TrainedModel(model.eval(), path, key, ckpt["metrics"], cached=True)
    spec = PreprocessSpec(input_size=input_size)
    torch.manual_seed(train_cfg.seed)
    model = TinyYolo(model_cfg)
    stats = train(
        model,
        InMemorySplit(train_ds, spec),
        train_cfg,
        progress=progress,
        description="training reference detector",
    )
    metrics = {**evaluate(model, InMemorySplit(YoloDataset(root, "val"), spec)), **stats}
    buf = io.BytesIO()
    torch.save(
        {
            "config": model_cfg.to_dict(),
            "state_dict": model.state_dict(),
            "metrics": metrics,
            "train": train_cfg.to_dict(),
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())
    return TrainedModel(model.eval(), path, key, metrics, cached=False)
