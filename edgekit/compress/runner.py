"""Run a recipe's torch-side steps: measure, apply, record, checkpoint after every step, resume on re-run.

After step ``i`` finishes, ``workdir/step_<i>.pt`` (the whole module) and ``workdir/step_<i>.json`` (its
record node and its key) are written atomically. Step ``i``'s key hashes the recipe's torch steps up to
and including ``i`` (not its PTQ step: changing the calibrator does not retrain), the input model's weights
and architecture, the epoch scale and the seed: what step ``i``'s result depends on, and nothing after it.
A re-run loads every finished step whose key matches and continues after the last one, so appending a
step to a recipe, or changing its last one, recomputes only from there.
"""

from __future__ import annotations

import copy
import io
import json
import time
from typing import Any

import torch
from torch import nn

from edgekit.compress.context import CompressContext, measure
from edgekit.compress.recipe import Recipe
from edgekit.compress.step import get_step
from edgekit.core.files import atomic_write_bytes, atomic_write_json, stable_hash
from edgekit.models.train import model_hash


def step_keys(model: nn.Module, recipe: Recipe, ctx: CompressContext) -> list[str]:
    """One key per torch step: the steps up to it, the input model, the epoch scale and the seed."""
    from edgekit.compress.finetune import FOREIGN_LR_SCALE, foreign_rate, is_foreign

    steps, mhash = [s.model_dump(mode="json") for s in recipe.torch_steps()], model_hash(model)
    # a user's model: its training differs (distillation alone, scaled rate, this loss version)
    foreign = {"foreign": {"lr_scale": FOREIGN_LR_SCALE, "loss": 2}} if is_foreign(model) else {}
    if is_foreign(model) and ctx.detection > 0:  # with labels: the detection loss's weight and version
        foreign["foreign"] |= {"detection": ctx.detection, "detection_loss": 1, "lr_scale": foreign_rate(ctx)}
    return [
        stable_hash(
            {
                "steps": steps[: i + 1],
                "model": mhash,
                "epochs_scale": ctx.epochs_scale,
                "seed": ctx.seed,
                **foreign,
            }
        )  # fmt: skip
        for i in range(len(steps))
    ]


def run_key(model: nn.Module, recipe: Recipe, ctx: CompressContext) -> str:
    """Identity of a whole recipe run (the key of its last torch step; ``""`` without torch steps)."""
    keys = step_keys(model, recipe, ctx)
    return keys[-1] if keys else ""


def _load_finished(ctx: CompressContext, index: int, valid: list[str]) -> tuple[nn.Module, dict] | None:
    """Step ``index``'s checkpoint if a run sharing steps ``0..index`` wrote it (its key is in ``valid``).

    ``valid`` holds the keys of steps ``index`` and later: a run whose first ``j + 1`` steps equal ours
    (``j >= index``) computed the same step ``index``; earlier versions keyed every step by the whole run.
    """
    meta_path, ckpt = ctx.workdir / f"step_{index}.json", ctx.workdir / f"step_{index}.pt"
    if not (meta_path.is_file() and ckpt.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") not in valid:
        return None
    model = torch.load(ckpt, map_location="cpu", weights_only=False)
    return model.eval(), {**meta["node"], "cached": True}


def _save_finished(ctx: CompressContext, index: int, key: str, model: nn.Module, node: dict) -> None:
    buf = io.BytesIO()
    torch.save(model, buf)
    atomic_write_bytes(ctx.workdir / f"step_{index}.pt", buf.getvalue())
    atomic_write_json(ctx.workdir / f"step_{index}.json", {"key": key, "node": node})


def _run_step(model: nn.Module, spec: Any, ctx: CompressContext, before: dict) -> tuple[nn.Module, dict]:
    step = get_step(spec.type)
    start = time.perf_counter()
    result = step.apply(model, spec, ctx)
    wall = time.perf_counter() - start
    after = measure(result.model, ctx)
    node = {
        "stage": f"compress:{spec.type}",
        "label": step.label(spec),
        "config": spec.model_dump(mode="json"),
        "metrics": {**after, "wall_s": round(wall, 2)},
        "extra": {"before": before, "history": result.history, **result.extra},
        "seconds": round(wall, 2),
        "cached": False,
    }
    return result.model.eval(), node


def _record(record: Any, node: dict) -> None:
    if record is not None:
        record.child(
            node["stage"],
            node["config"],
            label=node["label"],
            metrics=node["metrics"],
            extra=node["extra"],
            seconds=node["seconds"],
            cached=node["cached"],
        )


def run_recipe(
    model: nn.Module, recipe: Recipe, ctx: CompressContext, record: Any = None
) -> tuple[nn.Module, list[dict]]:
    """Apply the recipe's torch steps to ``model``; return the compressed model and one node dict per step.

    ``ptq`` is not run here (the pipeline quantizes the exported ONNX); for ``qat`` the returned model is the
    fake-quant model, to be exported with :func:`edgekit.compress.qat.export_qdq`.

    Args:
        model: The detector to compress (not modified; steps work on a copy).
        recipe: A validated :class:`Recipe`.
        ctx: Data, work folder and budgets.
        record: Optional :class:`~edgekit.report.record.RunRecord`; one ``compress:<type>`` node per step.

    Example:
        >>> model, nodes = run_recipe(trained.model, load_recipe("default"), ctx)  # doctest: +SKIP
    """
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    keys = step_keys(model, recipe, ctx)
    if ctx.teacher is None:
        ctx.teacher = copy.deepcopy(model).eval()
    current, nodes, before, resuming = copy.deepcopy(model), [], None, True
    for i, spec in enumerate(recipe.torch_steps()):
        loaded = _load_finished(ctx, i, keys[i:]) if resuming else None
        if loaded is not None:
            current, node = loaded
            ctx.note(f"step {i} ({spec.type}) loaded from {ctx.workdir / f'step_{i}.pt'}")
        else:
            resuming = False
            before = before or measure(current, ctx)
            current, node = _run_step(current, spec, ctx, before)
            _save_finished(ctx, i, keys[i], current, node)
            ctx.note(f"step {i} ({spec.type}) computed in {node['seconds']} s")
        before = {k: node["metrics"][k] for k in ("params", "macs", "size_bytes", "map50", "map50_95")}
        nodes.append(node)
        _record(record, node)
    return current, nodes
