"""Layer sensitivity on a tiny conv net with one deliberately outlier-heavy layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.core.errors import ConfigError
from edgekit.export.onnx import export_onnx
from edgekit.quantize.sensitivity import layer_sensitivity
from tests.quantize.conftest import HOST_FORM, skip_if_saturating
from tests.quantize.test_ptq import export_detector, make_detector, structured_images


class Chain(nn.Module):
    """Four 3x3 conv+ReLU layers and a 1x1 output conv; layer ``c2`` gets outlier weights."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.c0, self.c1, self.c2, self.c3):
            x = torch.relu(conv(x))
        return self.out(x)


def outlier_chain(outliers: bool = True) -> nn.Module:
    torch.manual_seed(3)
    model = Chain().eval()
    if not outliers:
        return model
    with torch.no_grad():
        # One weight per output channel 60x larger than the rest: per-channel INT8 then spends its
        # whole range on that weight and rounds the ordinary ones to a few levels.
        weight = model.c2.weight
        weight[:, 0, 1, 1] = weight.abs().max() * 60
        weight[:, 0, 1, 1] *= torch.sign(torch.randn(weight.shape[0]))
    return model


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(outlier_chain(), (1, 3, 32, 32), tmp_path_factory.mktemp("chain") / "chain.onnx")


def calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(12)]


def test_outlier_layer_ranked_first(chain_onnx: Path, reduce_range: bool) -> None:
    skip_if_saturating(reduce_range)
    ranking = layer_sensitivity(chain_onnx, calibration(), "minmax", num_images=4, reduce_range=reduce_range)
    names = [name for name, _ in ranking]
    assert sorted(names) == sorted(["/c0/Conv", "/c1/Conv", "/c2/Conv", "/c3/Conv", "/out/Conv"])
    assert names[0] == "/c2/Conv", ranking
    errors = [err for _, err in ranking]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0.0
    assert errors[0] > 5 * errors[1], ranking


def test_same_net_without_outliers_ranks_differently(tmp_path: Path) -> None:
    """Control: the ranking above comes from the outlier weights, not from the layer's position."""
    path = export_onnx(outlier_chain(outliers=False), (1, 3, 32, 32), tmp_path / "plain.onnx")
    ranking = layer_sensitivity(
        path, calibration(), "minmax", num_images=4, reduce_range=HOST_FORM.reduce_range
    )
    assert ranking[0][0] != "/c2/Conv", ranking


def test_candidates_and_metric(chain_onnx: Path, reduce_range: bool) -> None:
    skip_if_saturating(reduce_range)
    ranking = layer_sensitivity(
        chain_onnx,
        calibration,
        "percentile",
        metric="output_max_abs",
        candidates=["/c0/Conv", "/c2/Conv"],
        reduce_range=reduce_range,
    )
    assert [name for name, _ in ranking] == ["/c2/Conv", "/c0/Conv"]
    with pytest.raises(ConfigError, match="/c9/Conv"):
        layer_sensitivity(chain_onnx, calibration(), candidates=["/c9/Conv"])
    with pytest.raises(ConfigError, match="unknown sensitivity metric"):
        layer_sensitivity(chain_onnx, calibration(), metric="psnr")


def test_detector_ranks_every_conv(tmp_path: Path) -> None:
    path = export_detector(make_detector(heads=2), tmp_path / "det.onnx")
    ranking = layer_sensitivity(
        path, structured_images(8, seed=2), "minmax", num_images=2, reduce_range=HOST_FORM.reduce_range
    )
    assert len(ranking) == 6 and all(np.isfinite(err) and err > 0 for _, err in ranking)
