"""Fixtures for the compression tests: a fresh copy of the cached checkpoint and a context factory."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture
def model(trained):
    """A private copy of the cached reference detector (tests may prune it in place)."""
    return copy.deepcopy(trained.model).eval()


@pytest.fixture(scope="session")
def small_train(train_split):
    """The first 256 training images (8 optimiser steps per epoch at batch 32)."""
    from edgekit.compress.progressive import eval_subset

    return eval_subset(train_split, 256)


@pytest.fixture(scope="session")
def small_val(val_split):
    """The first 100 validation images (fast relative mAP checks)."""
    from edgekit.compress.progressive import eval_subset

    return eval_subset(val_split, 100)


@pytest.fixture
def make_ctx(tmp_path, small_train, small_val, spec):
    """``make_ctx(epochs_scale=..., workdir=...)`` -> a quiet CompressContext on the small splits."""
    from edgekit.compress.context import CompressContext

    def make(epochs_scale: float = 1.0, workdir=None, teacher=None):
        return CompressContext(
            train=small_train,
            val=small_val,
            spec=spec,
            workdir=workdir or tmp_path / "work",
            teacher=teacher,
            epochs_scale=epochs_scale,
            progress=False,
        )

    return make
