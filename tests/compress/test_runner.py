"""Resume: a run interrupted after step 1 re-runs only what did not finish."""

from __future__ import annotations

import pytest

from edgekit.compress import runner
from edgekit.compress.finetune import FinetuneStep
from edgekit.compress.recipe import Recipe


class Flaky(FinetuneStep):
    """A fine-tune that counts its calls and fails on the call number ``fail_on``."""

    calls = 0
    fail_on: int | None = 2

    def apply(self, model, spec, ctx):
        Flaky.calls += 1
        if Flaky.calls == Flaky.fail_on:
            raise RuntimeError("simulated interruption")
        return super().apply(model, spec, ctx)


def test_rerun_resumes_after_the_last_finished_step(model, make_ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "get_step", lambda _type: Flaky())
    recipe = Recipe(
        name="two", steps=[{"type": "finetune", "epochs": 1 / 8}, {"type": "finetune", "epochs": 1 / 8}]
    )
    workdir = tmp_path / "steps"
    with pytest.raises(RuntimeError, match="simulated"):
        runner.run_recipe(model, recipe, make_ctx(workdir=workdir))
    assert (workdir / "step_0.pt").is_file() and not (workdir / "step_1.pt").exists()
    assert Flaky.calls == 2

    ctx = make_ctx(workdir=workdir)
    Flaky.fail_on = None
    _, nodes = runner.run_recipe(model, recipe, ctx)
    assert Flaky.calls == 3  # only step 1 ran again
    assert nodes[0]["cached"] is True and nodes[1]["cached"] is False
    assert ctx.log[0].startswith("step 0 (finetune) loaded from") and ctx.log[1].startswith(
        "step 1 (finetune) computed"
    )
    assert nodes[1]["extra"]["before"]["params"] == nodes[0]["metrics"]["params"]


def test_a_different_recipe_does_not_reuse_checkpoints(model, make_ctx, tmp_path, monkeypatch):
    workdir = tmp_path / "steps"
    first = Recipe(name="a", steps=[{"type": "finetune", "epochs": 1 / 8}])
    runner.run_recipe(model, first, make_ctx(workdir=workdir))
    second = Recipe(name="a", steps=[{"type": "finetune", "epochs": 2 / 8}])
    ctx = make_ctx(workdir=workdir)
    _, nodes = runner.run_recipe(model, second, ctx)
    assert nodes[0]["cached"] is False and "computed" in ctx.log[0]


def test_a_new_calibrator_reuses_the_trained_steps(model, make_ctx, tmp_path):
    """The PTQ step runs on the ONNX, after the torch steps: changing it must not retrain them."""
    torch_step = {"type": "finetune", "epochs": 1 / 8}
    first = Recipe(name="a", steps=[torch_step, {"type": "ptq", "method": "default"}])
    second = Recipe(name="a", description="re-worded", steps=[torch_step, {"type": "ptq", "method": "auto"}])
    ctx = make_ctx(workdir=tmp_path / "steps")
    assert runner.run_key(model, first, ctx) == runner.run_key(model, second, ctx)
    third = Recipe(name="a", steps=[{"type": "finetune", "epochs": 2 / 8}, {"type": "ptq", "method": "auto"}])
    assert runner.run_key(model, third, ctx) != runner.run_key(model, first, ctx)


def test_appending_a_step_reuses_the_steps_before_it(model, make_ctx, tmp_path):
    """Step i's result depends on steps 0..i only: a recipe with one more step resumes after them."""
    workdir, step = tmp_path / "steps", {"type": "finetune", "epochs": 1 / 8}
    short = Recipe(name="a", steps=[step, {**step, "lr": 1e-3}])
    runner.run_recipe(model, short, make_ctx(workdir=workdir))
    longer = Recipe(name="a", steps=[step, {**step, "lr": 1e-3}, {**step, "lr": 5e-4}])
    ctx = make_ctx(workdir=workdir)
    _, nodes = runner.run_recipe(model, longer, ctx)
    assert [n["cached"] for n in nodes] == [True, True, False]
    changed = Recipe(name="a", steps=[step, {**step, "lr": 2e-3}, {**step, "lr": 5e-4}])
    ctx = make_ctx(workdir=workdir)
    _, nodes = runner.run_recipe(model, changed, ctx)
    assert [n["cached"] for n in nodes] == [True, False, False]


def test_the_compress_cache_is_keyed_by_its_inputs_not_by_the_target(tmp_path):
    """deploy to rpi4-ncnn after local finds the same compressed model (no second fine-tune)."""
    from edgekit.compress.recipe import load_recipe
    from edgekit.core.config import load_target
    from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
    from edgekit.pipeline import target_spec
    from edgekit.report.record import RunRecord
    from edgekit.stages.context import RunContext
    from edgekit.stages.model import compress_key

    def ctx(target_name: str, dataset: str = "builtin shapes") -> RunContext:
        target = load_target(target_name)
        record = RunRecord.new("r", [], target.model_dump(mode="json"), {"name": "default"})
        record.child("data", {"dataset": dataset})
        record.child("reference", {"target": target_name})  # the chain's ids differ per target
        return RunContext(target=target, run_dir=tmp_path, record=record, spec=target_spec(target))

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    recipe, model = load_recipe("default"), TinyYolo(TinyYoloConfig(num_classes=6))
    local, rpi = ctx("local"), ctx("rpi4-ncnn")
    assert local.record.node("reference").id != rpi.record.node("reference").id
    assert compress_key(local, recipe, model) == compress_key(rpi, recipe, model)
    assert compress_key(ctx("local", "my-data/"), recipe, model) != compress_key(local, recipe, model)
    other = TinyYolo(TinyYoloConfig(num_classes=6))
    assert compress_key(local, recipe, other) != compress_key(local, recipe, model)  # other weights
