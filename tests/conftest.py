"""Session fixtures: a small hard-shapes dataset and a reference detector trained once and cached on disk.

The checkpoint is keyed by data + architecture + schedule, so a second `make test` loads it instead of
retraining. Tests assert mechanics and relative drops on this fixed checkpoint, never an absolute mAP.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit"))

from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.data.shapes import ShapesConfig, builtin_dataset  # noqa: E402

TEST_SHAPES = ShapesConfig(variant="hard", splits={"train": 1200, "val": 200, "calib": 64}, seed=7)
TRAIN_SCALE = 1.2  # the deploy schedule x 1.2 on the small set; deploy tests pass the same scale


@pytest.fixture(scope="session")
def spec() -> PreprocessSpec:
    return PreprocessSpec(input_size=160)


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    from edgekit.models.zoo import cache_dir

    return builtin_dataset(cache_dir(), TEST_SHAPES, progress=False)


@pytest.fixture(scope="session")
def trained(shapes_root):
    """The cached reference detector (TrainedModel: .model, .path, .metrics)."""
    from edgekit.models.zoo import reference_detector, reference_train_config

    return reference_detector(shapes_root, reference_train_config(TRAIN_SCALE), progress=False)


@pytest.fixture(scope="session")
def val_split(shapes_root, spec):
    from edgekit.data.dataset import YoloDataset
    from edgekit.models.train import InMemorySplit

    return InMemorySplit(YoloDataset(shapes_root, "val"), spec)


@pytest.fixture(scope="session")
def train_split(shapes_root, spec):
    from edgekit.data.dataset import YoloDataset
    from edgekit.models.train import InMemorySplit

    return InMemorySplit(YoloDataset(shapes_root, "train"), spec)
