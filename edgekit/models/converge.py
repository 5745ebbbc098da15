"""Training the reference detector to convergence: cosine cycles with warm restarts and a plateau rule.

One schedule, stated so that anyone can reproduce the shipped checkpoint (``make reference``):

- cycles of ``cycle_epochs`` epochs, each a full cosine decay of the learning rate from ``lr`` × ``lr_decay``
  ^k to 0 (SGDR), continuing from the weights the previous cycle ended with; every cycle ends on an annealed
  model, so the val mAP measured there is a fair point on the training curve;
- the **plateau rule**: stop when ``patience`` cycles in a row fail to raise the best val mAP@0.5:0.95 by
  ``min_gain`` (or at ``max_cycles``); the reference is the best cycle's weights.

Every cycle's checkpoint and its val scores are written to a work folder (``cycle-NN.pt`` and
``curve.jsonl``), so an interrupted run resumes from the last finished cycle.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgekit.core.files import atomic_write_bytes, atomic_write_text
from edgekit.data.dataset import YoloDataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
from edgekit.models.train import InMemorySplit, TrainConfig, evaluate, train


@dataclass(frozen=True)
class ConvergeConfig:
    """The converged reference's schedule (see the module docstring for the rule)."""

    cycle_epochs: float = 10.0
    lr: float = 3e-3
    lr_decay: float = 0.7
    min_gain: float = 0.005
    patience: int = 2
    max_cycles: int = 12
    batch_size: int = 32
    weight_decay: float = 5e-4
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-dict form (for records and cache keys)."""
        return {"schedule": "cosine-restarts", **asdict(self)}

    def cycle(self, k: int) -> TrainConfig:
        """The :class:`TrainConfig` of cycle ``k`` (0-based): its peak lr and its own shuffling seed."""
        return TrainConfig(
            epochs=self.cycle_epochs,
            batch_size=self.batch_size,
            lr=round(self.lr * self.lr_decay**k, 8),
            weight_decay=self.weight_decay,
            seed=self.seed + k,
        )


def plateaued(curve: list[dict], cfg: ConvergeConfig) -> bool:
    """True when the last ``patience`` cycles of ``curve`` did not beat the best before them by ``min_gain``.

    Example:
        >>> cfg = ConvergeConfig(min_gain=0.01, patience=2)
        >>> pts = [{"map50_95": v} for v in (0.40, 0.50, 0.505, 0.508)]
        >>> plateaued(pts[:3], cfg), plateaued(pts, cfg)
        (False, True)
    """
    if len(curve) <= cfg.patience:
        return False
    best_before = max(p["map50_95"] for p in curve[: -cfg.patience])
    return all(p["map50_95"] < best_before + cfg.min_gain for p in curve[-cfg.patience :])


def best_cycle(curve: list[dict]) -> dict:
    """The curve point with the highest val mAP@0.5:0.95 (the earliest on a tie)."""
    return max(curve, key=lambda p: (p["map50_95"], -p["cycle"]))


def _save(path: Path, model: TinyYolo, extra: dict) -> None:
    buf = io.BytesIO()
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> tuple[TinyYolo, dict]:
    """A :class:`TinyYolo` from a checkpoint written here (``weights_only``: tensors and plain values)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(ckpt["config"])
    cfg["priors"] = tuple(cfg["priors"])
    model = TinyYolo(TinyYoloConfig(**cfg))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def converge(
    root: Path,
    model_cfg: TinyYoloConfig,
    cfg: ConvergeConfig,
    workdir: Path,
    progress: bool = True,
    log=print,
) -> tuple[TinyYolo, dict]:
    """Train (resuming from ``workdir``) until the plateau rule holds; return the best model and its record.

    The record holds the schedule, the training curve (per cycle: epochs so far, val mAP@0.5 and
    mAP@0.5:0.95, wall seconds) and which cycle was kept.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    curve_path = workdir / "curve.jsonl"
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    spec = PreprocessSpec(input_size=model_cfg.input_size)
    train_split = InMemorySplit(YoloDataset(root, "train"), spec)
    val_split = InMemorySplit(YoloDataset(root, "val"), spec)
    if curve:
        model, _ = load_checkpoint(workdir / f"cycle-{curve[-1]['cycle']:02d}.pt")
        log(f"resuming after cycle {curve[-1]['cycle']} ({curve[-1]['epochs']:g} epochs) from {workdir}")
    else:
        torch.manual_seed(cfg.seed)
        model = TinyYolo(model_cfg)
    while len(curve) < cfg.max_cycles and not plateaued(curve, cfg):
        k = len(curve)
        t0 = time.monotonic()
        stats = train(
            model,
            train_split,
            cfg.cycle(k),
            progress=progress,
            description=f"reference cycle {k + 1}",
            resume_dir=workdir,
        )
        scores = evaluate(model, val_split)
        point = {
            "cycle": k,
            "epochs": round(cfg.cycle_epochs * (k + 1), 4),
            "lr": cfg.cycle(k).lr,
            "map50": scores["map50"],
            "map50_95": scores["map50_95"],
            "final_loss": stats["final_loss"],
            "wall_s": round(time.monotonic() - t0, 1),
        }
        _save(workdir / f"cycle-{k:02d}.pt", model, {"point": point})
        curve.append(point)
        atomic_write_text(curve_path, "".join(json.dumps(p) + "\n" for p in curve))
        log(
            f"cycle {k + 1}: {point['epochs']:g} epochs, val mAP@0.5 {point['map50']:.4f}, "
            f"mAP@0.5:0.95 {point['map50_95']:.4f} ({point['wall_s']:.0f} s)"
        )
    best = best_cycle(curve)
    model, _ = load_checkpoint(workdir / f"cycle-{best['cycle']:02d}.pt")
    record = {
        "schedule": cfg.to_dict(),
        "curve": curve,
        "kept_cycle": best["cycle"],
        "epochs": best["epochs"],
        "total_epochs": curve[-1]["epochs"],
        "wall_s": round(sum(p["wall_s"] for p in curve), 1),
        "stopped": "plateau" if plateaued(curve, cfg) else "max_cycles",
        "map50": best["map50"],
        "map50_95": best["map50_95"],
    }
    return model, record
