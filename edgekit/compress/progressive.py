"""Progressive channel pruning (Micro-YOLO): one sixteenth of one layer at a time, stop at a mAP drop.

Schedule: for each layer (widest first unless the recipe names them), repeatedly remove another 1/16 of its
original channels (lowest L1 first), fine-tune briefly, evaluate. A trial whose ``metric`` (mAP@0.5 by
default, as in the Micro-YOLO paper; or mAP@0.5:0.95) falls more than ``max_drop`` points below its value
at the start of the step is rejected and that layer is done; the step returns the last accepted model, so
the result is always within ``max_drop`` of the start. The ``layers`` table in the record says how many
sixteenths each layer accepted, why it stopped, and both mAPs of its last trial.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from torch import nn

from edgekit.compress.finetune import finetune, recalibrate_bn
from edgekit.compress.graph import CRITERIA, prunable_convs, prune_plan
from edgekit.compress.step import Step, StepResult
from edgekit.core.errors import ConfigError
from edgekit.core.files import atomic_write_bytes, stable_hash
from edgekit.core.progress import track
from edgekit.models.train import InMemorySplit, evaluate


def eval_subset(data: InMemorySplit, limit: int | None) -> InMemorySplit:
    """The first ``limit`` images of ``data`` (a shallow view; None keeps all)."""
    if limit is None or limit >= len(data):
        return data
    view = copy.copy(data)
    view.samples, view.canvases = data.samples[:limit], data.canvases[:limit]
    view.letterboxes, view.boxes = data.letterboxes[:limit], data.boxes[:limit]
    return view


def sixteenth(channels: int, round_to: int) -> int:
    """Channels removed per trial: 1/16 of the layer, rounded up to a multiple of ``round_to``."""
    return max(round_to, math.ceil(channels / 16 / round_to) * round_to)


def layer_order(model: nn.Module, spec: Any, input_shape: tuple[int, ...]) -> list[str]:
    """Layers to try: the recipe's list, else the widest prunable convs first (most to gain)."""
    convs = prunable_convs(model, input_shape)
    if spec.layers:
        return list(spec.layers)
    names = sorted(convs, key=lambda n: -convs[n].weight.numel())
    return names[: spec.max_layers] if spec.max_layers else names


class ProgressiveStep(Step):
    """Micro-YOLO progressive pruning with a mAP-drop stop rule."""

    type = "progressive"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"progressive 1/16 steps, max {spec.metric} drop {spec.max_drop:g}"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`); resumes after the last finished layer.

        After every layer the model and the table so far go to ``workdir/progressive-<key>.pt`` (key: the
        spec, the input model, the epoch scale and the seed), so a long schedule stopped half-way goes on
        from there on the next run instead of starting over.
        """
        from edgekit.models.train import model_hash

        data = eval_subset(ctx.val, spec.eval_images)
        names = layer_order(model, spec, ctx.input_shape)
        key = stable_hash(
            {
                "spec": spec.model_dump(mode="json"),
                "model": model_hash(model),
                "scale": ctx.epochs_scale,
                "seed": ctx.seed,
            }
        )
        state_path = Path(ctx.workdir) / f"progressive-{key}.pt"
        state = _load_state(state_path)
        if state is not None:
            model, history, layers, start = state["model"], state["history"], state["layers"], state["start"]
            ctx.note(f"progressive: resuming after {len(layers)} of {len(names)} layers from {state_path}")
        else:
            history, layers, start = [], [], evaluate(model, data)[spec.metric]
        floor = start - spec.max_drop / 100
        with track(len(names) * spec.max_steps_per_layer, "progressive pruning", ctx.progress) as advance:
            advance(len(layers) * spec.max_steps_per_layer)
            for name in names[len(layers) :]:
                model, row = self._layer(model, name, spec, ctx, data, floor, history, advance)
                layers.append({**row, f"start_{spec.metric}": round(start, 4)})
                _save_state(
                    state_path, {"model": model, "history": history, "layers": layers, "start": start}
                )
        extra = {"layers": layers, "metric": spec.metric, "start": start, "floor": floor}
        return StepResult(model, history=history, extra=extra)

    def _layer(self, model, name, spec, ctx, data, floor, history, advance):
        convs = prunable_convs(model, ctx.input_shape)
        if name not in convs:
            raise ConfigError(
                f"progressive pruning: no prunable conv named {name!r}", f"use one of: {', '.join(convs)}"
            )
        channels = convs[name].out_channels
        step, accepted, reason, last = sixteenth(channels, spec.round_to), 0, "max_steps", {}
        for _ in range(spec.max_steps_per_layer):
            if _width(model, name) - step < spec.round_to:
                reason = "min_channels"
                break
            trial = copy.deepcopy(model)
            entry = prune_plan(trial, {name: step}, CRITERIA["l1"](), ctx.input_shape)
            recalibrate_bn(trial, ctx.train)
            if spec.finetune is not None:
                finetune(trial, spec.finetune, ctx, f"fine-tune {name}")
            scores = evaluate(trial, data)
            advance(info=f"{name}: {spec.metric} {scores[spec.metric]:.3f}")
            if scores[spec.metric] < floor:
                reason, last = "drop", scores
                break
            model, accepted, last = trial, accepted + 1, scores
            history.extend(entry)
        removed = channels - _width(model, name)
        return model, {
            "layer": name,
            "channels": channels,
            "kept": channels - removed,
            "sixteenths": round(16 * removed / channels, 2),
            "accepted_steps": accepted,
            "stopped_by": reason,
            "last_trial_map50": round(last["map50"], 4) if last else None,
            "last_trial_map50_95": round(last["map50_95"], 4) if last else None,
        }


def _load_state(path: Path) -> dict | None:
    import torch

    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: a whole pruned module


def _save_state(path: Path, state: dict) -> None:
    import io

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _width(model: nn.Module, name: str) -> int:
    return dict(model.named_modules())[name].out_channels
