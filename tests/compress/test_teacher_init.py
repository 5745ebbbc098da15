"""The swap's teacher init: shared layers copied, swapped blocks fitted to the teacher's features."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from edgekit.compress.control import recipe_epochs
from edgekit.compress.recipe import load_recipe
from edgekit.compress.swap import SwapStep, microyolo_like
from edgekit.compress.teacher_init import (
    block_pairs,
    channel_maps,
    hint_loss,
    init_from_teacher,
    match_moments,
)
from edgekit.core.errors import CompressionError
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

COPIED = ["stem.0", "neck16.0", "pred16", "route.0", "pred8"]
FITTED = ["stem.2", "stem.4", "p8", "p16.1", "neck16.1", "neck8"]


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_pairs_copy_the_shared_layers_and_fit_the_swapped_blocks():
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=0.5))
    copy_pairs, fit_pairs = block_pairs(microyolo_like(teacher, 1.0, 4), teacher)
    assert [n for n, _, _ in copy_pairs] == COPIED
    assert [n for n, _, _ in fit_pairs] == FITTED


def test_a_narrower_swap_is_refused_with_the_way_out():
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=0.5))
    with pytest.raises(CompressionError) as err:
        block_pairs(microyolo_like(teacher, 1.0, 4, width=0.5), teacher)
    assert "output channels" in str(err.value) and "init: random" in err.value.hint


def test_a_wider_copy_computes_what_the_teacher_computes():
    """Net2WiderNet: a twice-as-wide reference, every layer copied through the channel maps, same output."""
    torch.manual_seed(0)
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=0.5))
    with torch.no_grad():  # BN statistics away from their 0/1 defaults, so that the mapping matters
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    student = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=1.0))
    stats = init_from_teacher(
        student, teacher, None, types.SimpleNamespace(epochs=1.0, lr=1e-2, batch_size=8)
    )
    assert stats["fitted"] == [] and len(stats["copied"]) == 11
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(student.eval().raw(x), teacher.eval().raw(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dsconv", ["first", "heaviest"])
def test_a_wider_swap_fits_from_the_teacher(model, small_train, dsconv):
    student = microyolo_like(model, 1.0, 4, width=1.5, dsconv=dsconv)
    stats = init_from_teacher(
        student,
        model,
        small_train,
        types.SimpleNamespace(epochs=2.0, lr=1e-2, batch_size=32, student_fed=0.5),
    )
    assert stats["copied"] == COPIED and stats["fitted"] == FITTED and stats["widened"]
    assert stats["student_fed_steps"] == stats["steps"] // 2
    assert all(v < 1.5 for v in stats["fit_loss"].values()), stats["fit_loss"]
    # the first teacher-width channels of a copied layer are the teacher's own
    c = model.stem[0][0].out_channels
    assert torch.equal(student.stem[0][0].weight[:c], model.stem[0][0].weight)


def test_match_moments_gives_the_target_mean_and_std_per_channel():
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=0.5))
    _, fit_pairs = block_pairs(microyolo_like(teacher, 1.0, 4), teacher)
    for name, block, _ in fit_pairs:
        c_in = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][0].in_channels
        c_out = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
        torch.manual_seed(0)
        x = torch.randn(8, c_in, 12, 12)
        target = 0.3 * torch.randn(8, c_out, 12, 12) + torch.linspace(-1, 1, c_out)[None, :, None, None]
        match_moments(block, x, target, gain=1.0)
        block.eval()
        with torch.no_grad():
            y = block(x)
        if "DSConv" in type(block).__name__:  # its last activation bends the negative half
            continue
        torch.testing.assert_close(y.mean((0, 2, 3)), target.mean((0, 2, 3)), atol=1e-4, rtol=0, msg=name)
        if c_in != c_out:  # a residual block adds its input on top: only the mean is matched there
            torch.testing.assert_close(y.std((0, 2, 3)), target.std((0, 2, 3)), rtol=1e-3, atol=1e-4)


def test_init_copies_shared_layers_and_fits_every_block_better_than_a_constant(model, small_train):
    student = microyolo_like(model, 1.0, 4)
    stats = init_from_teacher(
        student, model, small_train, types.SimpleNamespace(epochs=4.0, lr=1e-2, batch_size=32)
    )
    assert stats["copied"] == COPIED and stats["fitted"] == FITTED and stats["steps"] == 32
    for name in COPIED:
        s, t = student.get_submodule(name), model.get_submodule(name)
        for (k, a), (_, b) in zip(s.state_dict().items(), t.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}.{k} not copied"
    # the loss is the block's squared error over the teacher output's variance: the fit learns every block
    first, last = stats["fit_loss_first_epoch"], stats["fit_loss"]
    assert set(first) == set(last) == set(FITTED)
    assert all(0 < last[n] < first[n] for n in FITTED), (first, last)
    # and a block without a residual ends better than predicting the teacher's mean (1.0)
    assert all(last[n] < 1 for n in FITTED if n != "p16.1"), last


def test_recipe_init_keeps_old_keys_counts_its_epochs_and_labels_the_step(tmp_path):
    plain = load_recipe(_write(tmp_path, "name: a\nsteps:\n  - {type: swap}\n"))
    dumped = plain.steps[0].model_dump(mode="json")
    assert "init" not in dumped and "init_fit" not in dumped  # cached keys of older recipes stay the same
    warm = load_recipe(
        _write(tmp_path, "name: b\nsteps:\n  - {type: swap, init: teacher, init_fit: {epochs: 3}}\n")
    )
    step = warm.steps[0]
    assert step.model_dump(mode="json")["init"] == "teacher"
    assert recipe_epochs(warm) == recipe_epochs(plain) + 3.0
    assert "from the teacher" in SwapStep().label(step)


def test_the_swap_step_records_the_init_and_trains_from_it(model, make_ctx):
    spec = load_recipe("microyolo").steps[0]  # init: teacher, as shipped
    ctx = make_ctx(epochs_scale=0.1, teacher=model)  # 0.2 fit epochs, 2.8 training epochs on 256 images
    result = SwapStep().apply(model, spec, ctx)
    init = result.extra["init"]
    assert init["copied"] == COPIED and init["fitted"] == FITTED and init["steps"] >= 1
    assert 0.0 <= init["after_init"]["map50_95"] <= init["after_init"]["map50"] <= 1.0
    assert result.extra["train"]["steps"] > 0
    # what the fit copied is the starting point: the prediction convs (their outputs never remapped)
    # moved only by the short training
    drift = (result.model.pred8.bias - model.pred8.bias).abs().max()
    assert drift < model.pred8.bias.abs().max()


def test_hints_reach_every_layer_and_come_off_after_training(model, small_train):
    student = microyolo_like(model, 1.0, 4, width=1.5)
    maps = channel_maps(student, model, np.random.default_rng(0))
    assert [len(maps[n]) for n in ("pred8", "pred16")] == [
        model.pred8.out_channels
    ] * 2  # the head: never remapped
    extra_loss, remove = hint_loss(student, model, maps, distill=0.0, hint=1.0)
    x, _, _ = small_train.batch(np.arange(4))
    loss = extra_loss(x, student.train().raw(x))
    loss.backward()
    assert float(loss.detach()) > 0
    # end to end, unlike the fit: the first conv (copied, before any hinted block) gets a gradient
    assert student.stem[0][0].weight.grad.abs().sum() > 0
    remove()
    assert not student.p8._forward_hooks and not student.p8._forward_pre_hooks
    spec = load_recipe("microyolo").steps[0]
    assert "hint" not in spec.model_copy(update={"hint": 0.0}).model_dump(mode="json")  # old keys stay put
    assert "hints x1" in SwapStep().label(spec.model_copy(update={"hint": 1.0}))
