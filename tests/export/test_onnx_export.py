"""ONNX export: FP32 parity with ONNX Runtime, file summary, broken files, MACs/params."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.core.errors import BuildError, ModelError
from edgekit.export.onnx import check_parity, export_onnx, model_macs_params, onnx_info

SHAPE = (1, 3, 64, 64)


class Det(nn.Module):
    """Conv-BN-ReLU backbone -> 1x1 prediction conv -> sigmoid/decode -> rows [1, N, 5 + nc]."""

    def __init__(self, nc: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.pred = nn.Conv2d(16, 5 + nc, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pred(self.body(x)).sigmoid()
        b, c, h, w = p.shape
        p = p.permute(0, 2, 3, 1).reshape(b, h * w, c)
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([gx, gy], -1).reshape(1, h * w, 2).float()
        return torch.cat([(grid + p[..., :2] * 2 - 0.5) * 4, (p[..., 2:4] * 2) ** 2 * 12, p[..., 4:]], -1)


def make_model() -> Det:
    torch.manual_seed(0)
    model = Det()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Det, Path]:
    model = make_model().train()  # export must switch to eval (BN running stats) and restore train
    path = export_onnx(model, SHAPE, tmp_path_factory.mktemp("exp") / "det.onnx")
    assert model.training
    return model, path


def inputs(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 1, SHAPE).astype(np.float32) for _ in range(count)]


def test_parity_within_1e4(exported: tuple[Det, Path]) -> None:
    model, path = exported
    stats = check_parity(model, path, inputs(), atol=1e-4, rtol=0.0)
    assert stats["passed"] and stats["max_abs"] < 1e-4 and stats["inputs"] == 3
    assert 0 < stats["mean_abs"] <= stats["max_abs"]


def test_parity_failure_names_error_and_tolerance(exported: tuple[Det, Path]) -> None:
    _, path = exported
    changed = make_model()
    with torch.no_grad():
        changed.pred.bias += 0.5  # the file no longer matches this model
    with pytest.raises(BuildError, match=r"max abs error .* exceeds the tolerance atol=0.0001") as info:
        check_parity(changed, path, inputs(1), atol=1e-4, rtol=0.0)
    assert info.value.hint


def test_onnx_info(exported: tuple[Det, Path]) -> None:
    model, path = exported
    info = onnx_info(path)
    assert info["input_name"] == "images" and info["input_shape"] == list(SHAPE)
    assert info["input_dtype"] == "float32"
    assert info["output_name"] == "output" and info["output_shape"] == [1, 16 * 16, 7]
    assert info["ops"]["Conv"] == 3 and "BatchNormalization" not in info["ops"]  # BN folded
    # Folding BN gives the two bias-free convs a bias each: torch params - BN params + folded biases.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_params = sum(m.weight.numel() + m.bias.numel() for m in bns)
    assert info["params"] == sum(p.numel() for p in model.parameters()) - bn_params + 8 + 16
    assert info["size_bytes"] == path.stat().st_size and info["opset"] == 17


def test_export_is_quiet_and_atomic(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(make_model(), SHAPE, tmp_path / "q.onnx")
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"] and onnx_info(path)["nodes"] > 0


def test_broken_files_are_model_errors(exported: tuple[Det, Path], tmp_path: Path) -> None:
    _, path = exported
    data = path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    for bad in (truncated, garbage):
        with pytest.raises(ModelError, match="corrupt or truncated") as info:
            onnx_info(bad)
        assert "re-export" in info.value.hint
    with pytest.raises(ModelError, match="does not exist"):
        onnx_info(tmp_path / "missing.onnx")


def test_macs_and_params_match_hand_count() -> None:
    model = make_model()
    counts = model_macs_params(model, SHAPE)
    conv_macs = 32 * 32 * 8 * 3 * 9 + 16 * 16 * 16 * 8 * 9 + 16 * 16 * 7 * 16
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    # torch-pruning also counts elementwise work: BN 2 per element, ReLU 1, the pred conv's bias 1.
    activations = 32 * 32 * 8 + 16 * 16 * 16
    assert counts["macs"] == conv_macs + 2 * activations + activations + 16 * 16 * 7
