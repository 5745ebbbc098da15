"""Progressive pruning stops at the mAP-drop threshold and returns the last good model."""

from __future__ import annotations

import pytest

from edgekit.compress.progressive import ProgressiveStep, eval_subset
from edgekit.compress.recipe import ProgressiveSpec
from edgekit.models.train import evaluate


@pytest.mark.parametrize("metric", ["map50", "map50_95"])
def test_stops_at_threshold_and_returns_last_good_model(model, make_ctx, metric):
    # No fine-tune and up to 8 sixteenths of the widest layer: removing half of p16 without recovery must
    # cost more than 0.5 points of either mAP, so the loop has to stop on the drop rule.
    spec = ProgressiveSpec(
        type="progressive",
        max_drop=0.5,
        metric=metric,
        layers=["p16.1.0"],
        max_steps_per_layer=8,
        round_to=8,
        finetune=None,
        eval_images=100,
    )
    ctx = make_ctx()
    data = eval_subset(ctx.val, 100)
    start = evaluate(model, data)[metric]
    result = ProgressiveStep().apply(model, spec, ctx)
    (row,) = result.extra["layers"]
    assert row["stopped_by"] == "drop", row
    assert row[f"last_trial_{metric}"] < start - 0.005
    assert result.extra["metric"] == metric and row[f"start_{metric}"] == round(start, 4)
    final = evaluate(result.model, data)[metric]
    assert final >= start - 0.005 - 1e-9
    width = result.model.p16[1][0].out_channels
    assert row["kept"] == width and row["sixteenths"] == 16 * (128 - width) / 128
    assert row["accepted_steps"] == len(result.history) and row["sixteenths"] == row["accepted_steps"]


def test_a_stopped_schedule_resumes_after_its_last_finished_layer(model, make_ctx, monkeypatch):
    """Layer by layer state in the work folder: a run stopped in its second layer goes on from there."""
    spec = ProgressiveSpec(
        type="progressive",
        max_drop=5.0,
        layers=["p16.1.0", "p8.0"],
        max_steps_per_layer=1,
        round_to=8,
        finetune=None,
        eval_images=50,
    )
    real_layer = ProgressiveStep._layer

    def stop_in_second(self, model, name, *args):
        if name == "p8.0":
            raise KeyboardInterrupt
        return real_layer(self, model, name, *args)

    monkeypatch.setattr(ProgressiveStep, "_layer", stop_in_second)
    with pytest.raises(KeyboardInterrupt):
        ProgressiveStep().apply(model, spec, make_ctx())
    monkeypatch.setattr(ProgressiveStep, "_layer", real_layer)
    ctx = make_ctx()
    result = ProgressiveStep().apply(model, spec, ctx)
    assert any("resuming after 1 of 2 layers" in line for line in ctx.log)
    assert [r["layer"] for r in result.extra["layers"]] == ["p16.1.0", "p8.0"]
    assert result.model.p16[1][0].out_channels == 128 - 8  # the first layer's accepted step, kept
