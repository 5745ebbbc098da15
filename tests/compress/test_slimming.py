"""Network slimming: the sparsity phase really separates BN gammas, then channels are removed consistently."""

from __future__ import annotations

import torch

from edgekit.compress.recipe import SlimSpec
from edgekit.compress.slimming import SlimStep, gated_bns

SHAPE = (1, 3, 160, 160)


def test_sparsity_phase_moves_gamma_and_removes_channels(model, make_ctx):
    bns = gated_bns(model, SHAPE)
    assert len(bns) == 9
    spec = SlimSpec(
        type="slim", sparsity={"epochs": 3.0, "lr": 1e-3, "lam": 250.0}, ratio=0.4, finetune={"epochs": 0.0}
    )
    params_before = sum(p.numel() for p in model.parameters())
    channels = sum(bn.num_features for bn in bns.values())
    result = SlimStep().apply(model, spec, make_ctx())
    sparsity = result.extra["sparsity"]
    # stated amount: at least 20 % more channels end below 0.1 x their layer mean |gamma| (seen: 0 -> 36 %)
    assert sparsity["fraction_after"] >= sparsity["fraction_before"] + 0.20, sparsity
    before, after = (torch.tensor(result.extra[k]) for k in ("gamma_before", "gamma_after"))
    assert len(before) == len(after) == channels
    # the spread grows: relative dispersion of |gamma| at least doubles
    assert float(after.std() / after.mean()) >= 2 * float(before.std() / before.mean())
    assert result.history and all(e["channels_after"] % 8 == 0 for e in result.history)
    assert sum(p.numel() for p in result.model.parameters()) < 0.8 * params_before
    assert result.model.eval()(torch.zeros(SHAPE)).shape[1:] == (500, 11)
    stages = result.extra["stages"]  # measured on the val split between the phases
    for m in stages.values():
        assert set(m) == {"map50", "map50_95"} and 0.0 <= m["map50_95"] <= m["map50"] <= 1.0


def test_removed_channels_are_the_smallest_gammas(model, make_ctx):
    spec = SlimSpec(
        type="slim", sparsity={"epochs": 0.0}, ratio=0.3, threshold="layer", finetune={"epochs": 0.0}
    )
    gammas = {n: bn.weight.detach().abs().clone() for n, bn in gated_bns(model, SHAPE).items()}
    result = SlimStep().apply(model, spec, make_ctx())
    for entry in result.history:
        g = gammas[entry["layer"]]
        removed = torch.tensor(entry["indices"])
        kept = torch.tensor([i for i in range(len(g)) if i not in set(entry["indices"])])
        assert float(g[removed].max()) <= float(g[kept].min()) + 1e-6


def _shrunk(model, ctx, shrink: str):
    """The model after 3 epochs of the sparsity phase with ``shrink``, and its BNs."""
    from edgekit.compress.finetune import finetune
    from edgekit.compress.recipe import SparsitySpec
    from edgekit.compress.slimming import proximal_shrink
    from edgekit.models.train import TrainHooks

    sp = SparsitySpec(epochs=3.0, lr=1e-3, lam=250.0, shrink=shrink)
    bns = gated_bns(model, SHAPE)
    finetune(model, sp, ctx, "sparsity", TrainHooks(after_step=proximal_shrink(bns, sp.lam, True, shrink)))
    return model.eval(), bns


def _remove_dead(model, bns, shrink: str) -> int:
    from edgekit.compress.graph import prune_plan
    from edgekit.compress.slimming import channel_strength, removal_criterion

    plan = {n: int((channel_strength(bn, shrink) == 0).sum()) for n, bn in bns.items()}
    prune_plan(model, plan, removal_criterion(shrink), SHAPE)
    return sum(plan.values())


def test_channel_shrink_kills_whole_channels_so_removing_them_changes_nothing(model, make_ctx, small_val):
    x, _, _ = small_val.batch(list(range(8)))
    model, bns = _shrunk(model, make_ctx(), "channel")
    with torch.no_grad():
        before = model(x)
    removed = _remove_dead(model, bns, "channel")  # traces the graph: needs autograd on
    with torch.no_grad():
        after = model.eval()(x)
    assert removed >= 100, removed  # seen: 218 of 656 channels zeroed whole
    # the removed channels output exactly 0 (gamma = beta = 0): only float summation order differs (seen 2e-5)
    assert torch.allclose(before, after, atol=1e-3), float((before - after).abs().max())


def test_gamma_shrink_leaves_dead_channels_a_signal_removing_them_loses(model, make_ctx, small_val):
    """Why the channel shrink exists: a zero gamma still outputs act(beta), which the detector uses."""
    x, _, _ = small_val.batch(list(range(8)))
    model, bns = _shrunk(model, make_ctx(), "gamma")
    with torch.no_grad():
        before = model(x)
    removed = _remove_dead(model, bns, "gamma")
    with torch.no_grad():
        after = model.eval()(x)
    assert removed >= 100, removed  # seen: 215
    assert float((before - after).abs().max()) > 1.0  # boxes move by pixels (seen: 28), not float noise
