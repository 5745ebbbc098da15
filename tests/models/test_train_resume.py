"""An interrupted training run continues from its last saved epoch and ends where an unbroken one does."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.data.dataset import YoloDataset
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
from edgekit.models.train import InMemorySplit, TrainConfig, TrainHooks, train


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def small(shapes_root, spec):
    return InMemorySplit(YoloDataset(shapes_root, "train"), spec, limit=128)  # 4 batches of 32 per epoch


def _fresh(num_classes: int, seed: int = 3) -> TinyYolo:
    torch.manual_seed(seed)
    return TinyYolo(TinyYoloConfig(num_classes=num_classes, width=0.25))


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(small, tmp_path):
    cfg = TrainConfig(epochs=3, lr=3e-3, seed=1)  # 12 steps
    start = _fresh(small.num_classes)
    whole = copy.deepcopy(start)
    stats = train(whole, small, cfg, progress=False)
    assert stats["resumed_at"] == 0

    def stop_at_step_10(model, lr, seen=[0]):  # noqa: B006 - a counter shared across calls
        seen[0] += 1
        if seen[0] == 10:
            raise Interrupted

    broken = copy.deepcopy(start)
    with pytest.raises(Interrupted):
        train(
            broken,
            small,
            cfg,
            TrainHooks(after_step=stop_at_step_10),
            False,
            resume_dir=tmp_path,
            save_every_s=0,
        )
    partial = list(tmp_path.glob("train-*.partial.pt"))
    assert len(partial) == 1  # saved after epochs 1 and 2 (the same file), not yet removed

    # another starting point does not pick up this run's state
    other = _fresh(small.num_classes, seed=4)
    assert train(other, small, cfg, progress=False, resume_dir=tmp_path)["resumed_at"] == 0

    resumed = copy.deepcopy(start)  # the caller rebuilds the same starting model, as a re-run does
    stats = train(resumed, small, cfg, progress=False, resume_dir=tmp_path, save_every_s=0)
    assert stats["resumed_at"] == 8  # the start of epoch 3
    assert not list(tmp_path.glob("train-*.partial.pt"))  # removed once finished
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
