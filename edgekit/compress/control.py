"""The control of a recipe: its compressed architecture trained from scratch with the same compute.

A recipe earns its place only if it beats spending the same training epochs on the small model directly.
The control is the compressed model's architecture (the same layer widths, the same Micro-YOLO blocks)
with every parameter re-initialised (seed 0), trained with one cosine schedule (AdamW, lr 3e-3, the
reference's settings) for the reference's epochs plus the recipe's own, and scored on the same val split.
``edgekit deploy --control`` adds it to the record as the ``control`` node; ``bench/compression.py``
reads it from there. The result is cached beside the recipe's steps, so a re-run is warm.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgekit.core.files import atomic_write_json, stable_hash

CONTROL_LR = 3e-3  # the reference's own schedule (edgekit.models.zoo.reference_train_config)
CONTROL_SEED = 0


def recipe_epochs(recipe: Any, prunable_layers: Callable[[], int] | None = None) -> float:
    """Training epochs a recipe spends at most (fine-tunes, sparsity, swap training, QAT), unscaled.

    A progressive step counts every trial it may run (``max_steps_per_layer`` × ``max_layers``, or ×
    ``prunable_layers()`` - the model's prunable convs, counted only when the recipe leaves the layers
    unbounded): an upper bound, so the control is never given less compute than the recipe had.
    """
    total = 0.0
    for step in recipe.torch_steps():
        if step.type == "progressive":
            if step.max_layers is None and prunable_layers is None:
                raise ValueError("an unbounded progressive step needs the model's prunable_layers")
            if step.finetune is not None:
                layers = step.max_layers or prunable_layers()
                total += step.finetune.epochs * step.max_steps_per_layer * layers
            continue
        if step.type == "swap" and step.init == "teacher":
            total += step.init_fit.epochs  # fitting the blocks costs about a training epoch per epoch
        for name in ("finetune", "train", "sparsity"):
            block = getattr(step, name, None)
            total += getattr(block, "epochs", 0.0) if block is not None else 0.0
        if step.type in ("finetune", "distill", "qat"):
            total += step.epochs
    return total


def reinitialised(model: torch.nn.Module, seed: int = CONTROL_SEED) -> torch.nn.Module:
    """A copy of ``model`` (its float view for QAT) with every parameter drawn afresh, seeded."""
    from edgekit.compress.qat import float_view

    net = copy.deepcopy(float_view(model))
    torch.manual_seed(seed)
    for module in net.modules():
        if hasattr(module, "reset_parameters") and module is not net:
            module.reset_parameters()
    return net


def train_control(
    model: torch.nn.Module,
    epochs: float,
    load_train: Callable[[], Any],
    val: Any,
    input_shape: tuple[int, ...],
    workdir: Path | None = None,
    progress: bool = False,
    seed: int = CONTROL_SEED,
) -> dict[str, Any]:
    """Train ``model``'s architecture from scratch for ``epochs``; its params, MACs and val mAP.

    ``load_train`` returns the training split; it is called only when the control really trains. With
    ``workdir`` the result is kept in ``workdir/control.json`` under a key of the architecture and the
    schedule, and returned with ``cached: True`` on a re-run (without loading the training images).
    ``seed`` draws the initial weights and the batch order (``bench/control_spread.py`` varies it to
    measure how far two controls of one architecture fall apart).
    """
    from edgekit.export.onnx import model_macs_params
    from edgekit.models.train import TrainConfig, evaluate, train

    net = reinitialised(model, seed)
    cfg = TrainConfig(epochs=round(float(epochs), 4), lr=CONTROL_LR, seed=seed)
    key = stable_hash({"arch": str(net), "train": cfg.to_dict()})
    path = workdir / "control.json" if workdir is not None else None
    if path is not None and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return {**kept["result"], "cached": True}
    t0 = time.perf_counter()
    train(net, load_train(), cfg, progress=progress, description="control (from scratch)", resume_dir=workdir)
    scores = evaluate(net, val)
    cost = model_macs_params(net, input_shape)
    result = {
        "params": int(cost["params"]),
        "macs": int(cost["macs"]),
        **scores,
        "epochs": cfg.epochs,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "result": result})
    return {**result, "cached": False}


def versus(recipe_metrics: dict[str, Any], control: dict[str, Any]) -> dict[str, float | None]:
    """Recipe − control in mAP points (positive: the recipe beat the same compute spent from scratch)."""
    out: dict[str, float | None] = {}
    for key in ("map50", "map50_95"):
        a, b = recipe_metrics.get(key), control.get(key)
        out[key] = round(100 * (a - b), 2) if a is not None and b is not None else None
    return out
