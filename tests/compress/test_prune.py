"""L1/FPGM pruning on the dependency graph: coupling, rounding, untouched head, ONNX parity, history."""

from __future__ import annotations

import copy

import numpy as np
import torch

from edgekit.compress import graph as G
from edgekit.compress.recipe import PruneSpec, Recipe
from edgekit.compress.runner import run_recipe
from edgekit.export.onnx import check_parity, export_onnx, model_macs_params

SHAPE = (1, 3, 160, 160)


def _prune(model, method="l1", ratio=0.3):
    plan = G.uniform_plan(model, ratio, 8, SHAPE)
    return G.prune_plan(model, plan, G.CRITERIA[method](), SHAPE)


def test_coupled_concat_channels_stay_consistent(model):
    original = copy.deepcopy(model)
    history = _prune(model)
    assert len(history) == 9  # every prunable conv of TinyYolo, one group each
    # the neck8 conv eats concat(route, p8): its input width must equal the two pruned widths
    assert model.neck8[0].in_channels == model.route[0][0].out_channels + model.p8[0].out_channels
    assert model.p16[1][0].in_channels == model.p8[0].out_channels
    for entry in history:
        assert (
            entry["channels_after"] % 8 == 0 and (entry["channels_before"] - entry["channels_after"]) % 8 == 0
        )
        assert entry["channels_after"] < entry["channels_before"]
    out = model(torch.zeros(2, 3, 160, 160))
    assert out.shape == original(torch.zeros(2, 3, 160, 160)).shape


def test_prediction_convs_keep_outputs_and_surviving_weights(model):
    original = copy.deepcopy(model)
    history = {e["layer"]: e for e in _prune(model)}
    no = 5 + model.cfg.num_classes
    assert model.pred8.out_channels == no and model.pred16.out_channels == no
    removed = set(history["neck8.0"]["indices"])
    kept = [i for i in range(history["neck8.0"]["channels_before"]) if i not in removed]
    torch.testing.assert_close(model.pred8.weight, original.pred8.weight[:, kept])
    torch.testing.assert_close(model.pred8.bias, original.pred8.bias)


def test_pruned_model_exports_and_ort_matches_torch(model, val_split, tmp_path):
    _prune(model, "fpgm", 0.4)
    path = export_onnx(model, SHAPE, tmp_path / "pruned.onnx")
    batches = [val_split.batch(np.array([i]))[0].numpy() for i in (0, 1)]
    stats = check_parity(model, path, batches, atol=1e-4, rtol=1e-4)
    assert stats["passed"] and stats["max_abs"] <= 1e-4 + 1e-4 * 160


def test_l1_and_fpgm_pick_different_channels(model):
    l1 = {e["layer"]: set(e["indices"]) for e in _prune(copy.deepcopy(model), "l1")}
    fpgm = {e["layer"]: set(e["indices"]) for e in _prune(copy.deepcopy(model), "fpgm")}
    assert l1.keys() == fpgm.keys()
    differing = [name for name in l1 if l1[name] != fpgm[name]]
    # L1 removes the smallest filters, FPGM the ones closest to the others' geometric median: on a trained
    # model these disagree on most layers
    assert len(differing) >= len(l1) // 2, differing


def test_macs_target_and_history_replay(model):
    fresh = copy.deepcopy(model)
    base = model_macs_params(model, SHAPE)["macs"]
    plan = G.plan_for_macs(model, 0.5, 8, SHAPE)
    history = G.prune_plan(model, plan, G.CRITERIA["l1"](), SHAPE)
    macs = model_macs_params(model, SHAPE)["macs"]
    assert 0.3 * base <= macs <= 0.5 * base
    G.replay(fresh, history, SHAPE)
    x = torch.randn(1, 3, 160, 160)
    torch.testing.assert_close(fresh(x), model(x))


def test_prune_step_writes_a_record_node(model, make_ctx, trained):
    from edgekit.report.record import RunRecord

    record = RunRecord.new("t", [], {"name": "local"}, {"name": "t"})
    recipe = Recipe(name="t", steps=[PruneSpec(type="prune", method="l1", ratio=0.3).model_dump()])
    ctx = make_ctx(epochs_scale=0.05)
    pruned, nodes = run_recipe(model, recipe, ctx, record)
    node = record.nodes[-1]
    assert node.stage == "compress:prune" and nodes[0]["stage"] == "compress:prune"
    before = node.extra["before"]
    for key in ("params", "macs", "size_bytes", "map50", "map50_95", "wall_s"):
        assert key in node.metrics
    assert node.metrics["params"] < before["params"] and node.metrics["macs"] < before["macs"]
    assert node.metrics["size_bytes"] < before["size_bytes"]
    assert {e["layer"] for e in node.extra["history"]} == set(G.prunable_convs(trained.model, SHAPE))
    # 30 % of channels and one fine-tune step: a bounded relative drop on the fixed checkpoint
    assert node.metrics["map50"] >= before["map50"] - 0.25
