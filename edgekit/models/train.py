"""Training, fine-tuning and evaluation of detectors on a YOLO-format dataset (CPU-sized)."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.core.files import atomic_write_bytes, sha256_bytes, stable_hash
from edgekit.core.progress import track
from edgekit.data.dataset import Sample, YoloDataset
from edgekit.data.metrics import coco_map
from edgekit.data.preprocess import Letterbox, PreprocessSpec, letterbox, to_tensor
from edgekit.models.loss import build_targets, detection_loss
from edgekit.runners.detcore import candidates, nms


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, cosine schedule, horizontal flips)."""

    epochs: float = 8.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    hflip: bool = True

    def to_dict(self) -> dict:
        """Plain-dict form (for records and cache keys)."""
        return asdict(self)


@dataclass
class TrainHooks:
    """Extension points used by compression steps (distillation, sparsity, QAT).

    Attributes:
        extra_loss: ``(images, raw_outputs) -> loss tensor`` added to the detection loss.
        after_step: ``(model, lr) -> None`` called after each optimiser step (e.g. proximal BN-γ shrink).
    """

    extra_loss: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None
    after_step: Callable[[nn.Module, float], None] | None = None


class InMemorySplit:
    """A dataset split letterboxed once into memory: uint8 canvases plus boxes in input pixels."""

    def __init__(self, dataset: YoloDataset, spec: PreprocessSpec, limit: int | None = None) -> None:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        self.spec, self.samples = spec, [dataset.sample(i) for i in range(n)]
        self.canvases = np.empty((n, spec.input_size, spec.input_size, 3), np.uint8)
        self.letterboxes: list[Letterbox] = []
        self.boxes: list[np.ndarray] = []
        for i in range(n):
            image, sample = dataset.load(i)
            self.canvases[i], lb = letterbox(image, spec)
            self.letterboxes.append(lb)
            b = sample.boxes.copy()
            b[:, [0, 2]] = b[:, [0, 2]] * lb.scale + lb.pad_x
            b[:, [1, 3]] = b[:, [1, 3]] * lb.scale + lb.pad_y
            self.boxes.append(b)
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def tensor(self, index: int) -> np.ndarray:
        """Batch-1 network input of image ``index`` (the one preprocessing)."""
        return to_tensor(self.canvases[index], self.spec)

    def batch(self, indices: np.ndarray, flips: np.ndarray | None = None):
        """Images ``[B,3,S,S]`` float32 plus per-image boxes and classes (optionally h-flipped)."""
        x = self.canvases[indices].astype(np.float32) / 255.0
        boxes, classes = [], []
        size = self.spec.input_size
        for j, i in enumerate(indices):
            b = self.boxes[i].copy()
            if flips is not None and flips[j]:
                x[j] = x[j, :, ::-1]
                b[:, [0, 2]] = size - b[:, [2, 0]]
            boxes.append(b)
            classes.append(self.samples[i].classes)
        mean, std = np.asarray(self.spec.mean, np.float32), np.asarray(self.spec.std, np.float32)
        x = ((x - mean) / std).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x)), boxes, classes


def model_hash(model: nn.Module) -> str:
    """Content hash of a model: its architecture (module tree) and every tensor of its state dict."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return stable_hash({"arch": str(model), "weights": sha256_bytes(buf.getvalue())})


def _resume_path(
    folder: Path, model: nn.Module, data: InMemorySplit, cfg: TrainConfig, description: str
) -> Path:
    """``folder/train-<key>.partial.pt``: one file per (starting weights, data, schedule, description)."""
    key = stable_hash(
        {"model": model_hash(model), "images": len(data), "cfg": cfg.to_dict(), "what": description}
    )
    return Path(folder) / f"train-{key}.partial.pt"


def _save_partial(path: Path, step: int, model: nn.Module, opt, rng, order, loss_value: float) -> None:
    gen, buf = rng.bit_generator.state, io.BytesIO()
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            # numpy's PCG64 state holds 128-bit integers; kept as text so the file loads with weights_only
            "np_rng": {k: str(v) for k, v in gen["state"].items()},
            "np_rng_extra": [int(gen["has_uint32"]), int(gen["uinteger"])],
            "torch_rng": torch.get_rng_state(),
            "order": torch.from_numpy(np.asarray(order, np.int64)),
            "loss": loss_value,
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def _load_partial(path: Path, model: nn.Module, opt, rng) -> tuple[int, np.ndarray, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    has_uint32, uinteger = state["np_rng_extra"]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {k: int(v) for k, v in state["np_rng"].items()},
        "has_uint32": has_uint32,
        "uinteger": uinteger,
    }
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), state["order"].numpy(), float(state["loss"])


Objective = Callable[[torch.Tensor, list, list], tuple[torch.Tensor, list[torch.Tensor]]]


def detection_objective(model: nn.Module) -> Objective:
    """The built-in detector's loss on labelled boxes (needs ``model.strides`` and ``model.cfg.priors``)."""
    strides, priors = model.strides, model.cfg.priors

    def objective(x: torch.Tensor, boxes: list, classes: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raw = model.raw(x)
        targets = build_targets(boxes, classes, [r.shape[2:] for r in raw], strides, priors)
        loss, _parts = detection_loss(raw, targets, strides, priors)
        return loss, raw

    return objective


def train(
    model: nn.Module,
    data: InMemorySplit,
    cfg: TrainConfig,
    hooks: TrainHooks | None = None,
    progress: bool = True,
    description: str = "training",
    resume_dir: Path | None = None,
    save_every_s: float = 60.0,
    objective: Objective | None = None,
) -> dict:
    """Train ``model`` in place; return ``{"steps", "final_loss", "resumed_at"}``.

    With ``resume_dir``, the whole training state (weights, optimiser, both random generators, the epoch's
    batch order) goes to ``resume_dir/train-<key>.partial.pt`` at the end of an epoch once ``save_every_s``
    seconds have passed since the last save; a later call with the same starting weights, data size,
    schedule and description continues from there and ends with the same weights as an uninterrupted run.
    The file is removed when training finishes. ``resumed_at`` is the step it continued from (0: fresh).

    ``objective(images, boxes, classes) -> (loss, raw maps)`` is what is minimised; by default the
    built-in detector's loss (:func:`detection_objective`). A model without labels or loss of its own
    passes a distillation objective instead (:func:`edgekit.compress.distill.raw_map_objective`).

    Example:
        >>> data = InMemorySplit(YoloDataset(root, "train"), spec)  # doctest: +SKIP
        >>> stats = train(model, data, TrainConfig(epochs=1))  # doctest: +SKIP
    """
    hooks = hooks or TrainHooks()
    partial = _resume_path(resume_dir, model, data, cfg, description) if resume_dir is not None else None
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    scales: dict[
        float, list
    ] = {}  # a module may carry an ``lr_scale`` for its own parameters (slimming's gates)
    own = {
        id(p): float(m.lr_scale)
        for m in model.modules()
        if hasattr(m, "lr_scale")
        for p in m.parameters(False)
    }
    for p in params:
        scales.setdefault(own.get(id(p), 1.0), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr_scale": k} for k, ps in scales.items()], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    loss_value = float("nan")
    start, order = 0, None
    if partial is not None and partial.is_file():
        start, order, loss_value = _load_partial(partial, model, opt, rng)
    model.train()
    objective = objective or detection_objective(model)
    saved_at = time.monotonic()
    with track(total, description, progress) as advance:
        if start:
            advance(start, info=f"resumed at step {start}")
        for step in range(start, total):
            if step % steps_per_epoch == 0:
                if partial is not None and step > start and time.monotonic() - saved_at >= save_every_s:
                    _save_partial(partial, step, model, opt, rng, order, loss_value)
                    saved_at = time.monotonic()
                order = rng.permutation(len(data))
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            k = step % steps_per_epoch
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            flips = rng.random(len(idx)) < 0.5 if cfg.hflip else None
            x, boxes, classes = data.batch(idx, flips)
            loss, raw = objective(x, boxes, classes)
            if hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss(x, raw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            if hooks.after_step is not None:
                hooks.after_step(model, lr)
            loss_value = float(loss.detach())
            advance(info=f"loss {loss_value:.3f}")
    model.eval()
    if partial is not None:
        partial.unlink(missing_ok=True)
    return {"steps": total, "final_loss": round(loss_value, 4), "resumed_at": start}


def postprocess(
    output: np.ndarray, head: str, lb: Letterbox, conf: float = 0.001, iou: float = 0.5, max_det: int = 100
) -> np.ndarray:
    """One image's raw output → NMS'd ``(K, 6)`` detections in original-image pixels."""
    dets = nms(candidates(output, head, conf), iou, max_det)
    if len(dets):
        dets = dets.copy()
        dets[:, :4] = lb.to_original(dets[:, :4])
    return dets


def map_from_candidates(data: InMemorySplit, cands: list[np.ndarray], iou: float = 0.5) -> dict[str, float]:
    """MAP from per-image candidate rows in network-input pixels (e.g. written by a device runner)."""
    dets = []
    for c, lb in zip(cands, data.letterboxes, strict=True):
        d = nms(np.asarray(c, np.float32).reshape(-1, 6), iou, 100)
        if len(d):
            d = d.copy()
            d[:, :4] = lb.to_original(d[:, :4])
        dets.append(d)
    return coco_map(data.samples, dets, data.num_classes)


@torch.no_grad()
def torch_candidates(
    model: nn.Module, data: InMemorySplit, conf: float = 0.001, batch_size: int = 50, head: str | None = None
) -> list[np.ndarray]:
    """Run a torch detector over ``data``; per image, candidate rows in network-input pixels.

    ``head`` is the output layout; by default the model's ``head_layout`` (a user's detector), else
    ``yolov5`` (the built-in one).
    """
    head = head or getattr(model, "head_layout", "yolov5")
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x, _, _ = data.batch(idx)
        y = model(x).numpy()
        out.extend(candidates(y[j : j + 1], head, conf) for j in range(len(idx)))
    return out


def evaluate(model: nn.Module, data: InMemorySplit) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 of a torch detector on ``data``."""
    return map_from_candidates(data, torch_candidates(model, data))


def samples_of(data: InMemorySplit) -> list[Sample]:
    """Ground truth of ``data`` in original-image pixels."""
    return data.samples
