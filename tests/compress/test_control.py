"""The control of a recipe: the same architecture re-initialised and trained from scratch, cached."""

from __future__ import annotations

import pytest
import torch

from edgekit.compress.control import recipe_epochs, reinitialised, train_control, versus
from edgekit.compress.recipe import load_recipe


def test_recipe_epochs_count_every_training_block_and_bound_progressive():
    assert recipe_epochs(load_recipe("default")) == 20.0  # the L1 step's distilled fine-tune
    slim = load_recipe("slim")
    (step,) = slim.torch_steps()
    assert recipe_epochs(slim) == step.sparsity.epochs + step.finetune.epochs
    assert recipe_epochs(load_recipe("none")) == 0.0
    micro = load_recipe("microyolo")
    swap, prog, tail = micro.torch_steps()
    assert prog.max_layers is None  # every prunable layer: the bound is the model's count
    bound = prog.finetune.epochs * prog.max_steps_per_layer * 9
    assert swap.init == "teacher"  # fitting the swapped blocks to the teacher counts as training
    assert tail.type == "distill"  # the fine-tune after the pruning trials
    with pytest.raises(ValueError, match="prunable_layers"):
        recipe_epochs(micro)
    expected = swap.init_fit.epochs + swap.train.epochs + bound + tail.epochs
    assert recipe_epochs(micro, lambda: 9) == expected == 50.0 + bound


def test_reinitialised_keeps_the_architecture_and_draws_new_weights(model):
    fresh = reinitialised(model)
    assert str(fresh) == str(model)
    old, new = dict(model.named_parameters()), dict(fresh.named_parameters())
    assert old.keys() == new.keys()
    convs = [k for k, v in old.items() if v.dim() == 4]
    assert all(not torch.equal(old[k], new[k]) for k in convs)
    assert torch.equal(next(reinitialised(model).parameters()), next(fresh.parameters()))  # seeded
    other_seed = next(reinitialised(model, seed=1).parameters())
    assert not torch.equal(other_seed, next(fresh.parameters()))  # bench/control_spread.py's other draws


def test_train_control_scores_the_architecture_and_is_cached(model, small_train, small_val, spec, tmp_path):
    first = train_control(model, 0.25, lambda: small_train, small_val, spec.input_shape(), tmp_path)
    assert first["cached"] is False and first["epochs"] == 0.25
    assert first["params"] == sum(p.numel() for p in model.parameters())
    assert 0.0 <= first["map50_95"] <= first["map50"] <= 1.0
    again = train_control(model, 0.25, lambda: small_train, small_val, spec.input_shape(), tmp_path)
    assert again["cached"] is True and again["map50_95"] == first["map50_95"]
    other = train_control(model, 0.5, lambda: small_train, small_val, spec.input_shape(), tmp_path)
    assert other["cached"] is False  # another schedule is another control


def test_versus_is_recipe_minus_control_in_points():
    assert versus({"map50": 0.9, "map50_95": 0.6}, {"map50": 0.88, "map50_95": 0.61}) == {
        "map50": 2.0,
        "map50_95": -1.0,
    }
    assert versus({"map50": 0.9}, {"map50": None})["map50"] is None
