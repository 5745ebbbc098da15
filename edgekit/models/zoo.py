"""The built-in reference detector: trained once per (data, architecture, schedule), then cached."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from edgekit.core.files import atomic_write_bytes, stable_hash
from edgekit.data.dataset import YoloDataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.models.converge import ConvergeConfig, converge, load_checkpoint
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
    """A single cosine schedule: 10 epochs × ``epochs_scale``, AdamW 3e-3.

    The quick reference of tests and of ``--epochs-scale`` runs; the default deploy uses
    :func:`converged_reference` instead.
    """
    return TrainConfig(epochs=round(10.0 * epochs_scale, 4), lr=3e-3)


def shipped_dir() -> Path:
    """Folder of the checkpoints that ship with edgekit (``edgekit/models/weights``)."""
    return Path(__file__).resolve().parent / "weights"


def converged_key(
    root: Path, model_cfg: TinyYoloConfig, cfg: ConvergeConfig, data_key: str | None = None
) -> str:
    """Identity of a converged reference: hashes of the data generator, the architecture and the schedule.

    ``data_key`` (e.g. ``stable_hash(ShapesConfig().__dict__)``, what :func:`dataset_key` reads back from a
    generated set) stands in for ``root`` when the data is not generated yet.
    """
    data = data_key if data_key is not None else dataset_key(root)
    return stable_hash({"data": data, "model": model_cfg.to_dict(), "converge": cfg.to_dict()})


def converged_reference(
    root: Path,
    input_size: int = 160,
    cfg: ConvergeConfig | None = None,
    progress: bool = True,
    cache: Path | None = None,
    shipped: Path | None = None,
    log=None,
) -> TrainedModel:
    """The converged reference for ``root``: the shipped checkpoint, else the cached one, else trained here.

    A dataset or schedule the shipped checkpoints were not made for has another key, so it is trained
    (to the same plateau rule, resumable) and the log says why.

    Example:
        >>> trained = converged_reference(builtin_dataset(cache_dir()))  # doctest: +SKIP
    """
    import sys

    log = log or (lambda msg: sys.stderr.write(msg + "\n"))
    cfg = cfg or ConvergeConfig()
    names = YoloDataset(root, "train").names
    model_cfg = TinyYoloConfig(num_classes=len(names), input_size=input_size)
    key = converged_key(root, model_cfg, cfg)
    name = f"reference-{key}.pt"
    for folder in (shipped or shipped_dir(), (cache or cache_dir()) / "models"):
        if (folder / name).exists():
            model, ckpt = load_checkpoint(folder / name)
            return TrainedModel(model, folder / name, key, dict(ckpt["metrics"]), cached=True)
    log(
        f"no shipped reference for this dataset and schedule (key {key}, {input_size} px): training one to "
        f"convergence ({cfg.cycle_epochs:g}-epoch cosine cycles until {cfg.patience} in a row gain < "
        f"{cfg.min_gain * 100:g} points of mAP@0.5:0.95); this runs once and resumes if interrupted"
    )
    workdir = (cache or cache_dir()) / "models" / f"converge-{key}"
    model, record = converge(root, model_cfg, cfg, workdir, progress=progress, log=log)
    path = (cache or cache_dir()) / "models" / name
    save_reference(path, model, record)
    return TrainedModel(model, path, key, record, cached=False)


def save_reference(path: Path, model: TinyYolo, record: dict) -> Path:
    """Write a converged reference checkpoint (loadable with ``weights_only``) and its record beside it."""
    import json

    buf = io.BytesIO()
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "metrics": record}, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    return path


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
