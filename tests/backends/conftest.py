"""Fixtures for the ncnn tests: a tiny detector-like CNN, structured synthetic images, and its ncnn
conversions and int8 builds, made once per session (pnnx takes ~0.5 s, KL calibration ~1 s)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from edgekit.core.errors import MissingExtraError
from tests.backends.ncnn_models import SIZE, TinyDetector, synthetic_images


@pytest.fixture(scope="session")
def ncnn_tools() -> None:
    """Skip unless the ncnn wheel and pnnx are installed (the ``ncnn`` extra)."""
    pytest.importorskip("ncnn", reason="the ncnn extra is not installed: pip install 'edgekit[ncnn]'")
    from edgekit.backends.ncnn.convert import find_pnnx

    try:
        find_pnnx()
    except MissingExtraError:
        pytest.skip(reason="pnnx is not installed: pip install 'edgekit[ncnn]'")


@pytest.fixture(scope="session")
def detector() -> TinyDetector:
    import torch

    torch.manual_seed(0)
    model = TinyDetector().eval()
    for module in model.modules():  # trained-looking BN statistics, so folding them is not a no-op
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="session")
def detector_pt(detector, tmp_path_factory):
    from edgekit.backends.ncnn.convert import export_torchscript

    return export_torchscript(detector, [1, 3, SIZE, SIZE], tmp_path_factory.mktemp("ts") / "det.pt")


@pytest.fixture(scope="session")
def fp32_model(ncnn_tools, detector_pt, tmp_path_factory):
    from edgekit.backends.ncnn.convert import convert_with_pnnx

    return convert_with_pnnx(detector_pt, [1, 3, SIZE, SIZE], tmp_path_factory.mktemp("fp32"), fp16=False)


@pytest.fixture(scope="session")
def calib_images() -> list[np.ndarray]:
    return synthetic_images(24, seed=1)


@pytest.fixture(scope="session")
def eval_images() -> list[np.ndarray]:
    return synthetic_images(8, seed=2)  # never seen by calibration


@pytest.fixture(scope="session")
def int8_results(fp32_model, calib_images, tmp_path_factory):
    from edgekit.backends.ncnn.int8 import build_int8

    return {
        method: build_int8(
            fp32_model.param, fp32_model.bin, lambda: calib_images, method, tmp_path_factory.mktemp(method)
        )
        for method in ("kl", "aciq")
    }
