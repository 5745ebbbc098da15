"""DSConv / MBConv-SE shapes and parameter counts; Micro-YOLO is smaller than TinyYolo and trains."""

from __future__ import annotations

import pytest
import torch

from edgekit.compress.layers import DSConv, MBConv, conv_params, dsconv_params
from edgekit.export.onnx import model_macs_params
from edgekit.models.microyolo import MicroYolo, MicroYoloConfig
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

SHAPE = (1, 3, 160, 160)


def _conv_weights(module):
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_dsconv_shape_and_params_follow_the_formula():
    for c_in, c_out, k in ((16, 32, 3), (64, 128, 5)):
        block = DSConv(c_in, c_out, k)
        assert block(torch.zeros(2, c_in, 20, 20)).shape == (2, c_out, 20, 20)
        assert _conv_weights(block) == dsconv_params(c_in, c_out, k) == c_in * k * k + c_in * c_out
        assert dsconv_params(c_in, c_out, k) < conv_params(c_in, c_out, k)


def test_mbconv_se_shapes_params_and_residual():
    block = MBConv(32, 32, k=5, expansion=2.0, se_reduction=4)
    x = torch.randn(2, 32, 10, 10)
    assert block(x).shape == x.shape and block.residual
    hidden, se_hidden = 64, 16
    expected = (
        32 * hidden
        + hidden * 25
        + (hidden * se_hidden + se_hidden)
        + (se_hidden * hidden + hidden)
        + hidden * 32
    )
    assert _conv_weights(block) + block.se.reduce.bias.numel() + block.se.expand.bias.numel() == expected
    plain = MBConv(32, 48, k=3, expansion=1.0, se_reduction=4)
    assert isinstance(plain.expand, torch.nn.Identity) and not plain.residual
    assert plain(x).shape == (2, 48, 10, 10)


def test_microyolo_is_smaller_than_tinyyolo_and_has_the_same_interface():
    tiny, micro = TinyYolo(TinyYoloConfig()).eval(), MicroYolo(MicroYoloConfig()).eval()
    t, m = model_macs_params(tiny, SHAPE), model_macs_params(micro, SHAPE)
    assert m["params"] * 2 < t["params"] and m["macs"] * 2 < t["macs"]
    x = torch.zeros(1, 3, 160, 160)
    assert micro(x).shape == tiny(x).shape
    assert [r.shape for r in micro.raw(x)] == [r.shape for r in tiny.raw(x)]
    assert len(micro.prediction_layers()) == 2 and micro.strides == tiny.strides


def test_microyolo_trains_one_step(small_train):
    from edgekit.models.train import TrainConfig, train

    model = MicroYolo(MicroYoloConfig(num_classes=small_train.num_classes))
    before = model.p8.project[0].weight.detach().clone()
    stats = train(model, small_train, TrainConfig(epochs=1 / 8), progress=False)
    assert stats["steps"] == 1 and torch.isfinite(torch.tensor(stats["final_loss"]))
    assert not torch.equal(before, model.p8.project[0].weight)


def test_microyolo_dsconv_at_the_heaviest_layers_moves_parameters_not_the_interface():
    first, heavy = MicroYolo(MicroYoloConfig()).eval(), MicroYolo(MicroYoloConfig(dsconv="heaviest")).eval()
    assert isinstance(first.stem[2], DSConv) and isinstance(first.p16[1], MBConv)
    assert isinstance(heavy.stem[2], MBConv) and isinstance(heavy.stem[4], MBConv)
    assert all(isinstance(b, DSConv) for b in (heavy.p8, heavy.p16[1], heavy.neck16[1], heavy.neck8))
    f, h = model_macs_params(first, SHAPE), model_macs_params(heavy, SHAPE)
    # no squeeze-excite on the wide maps: fewer parameters; MACs, spent on the 80x80 / 40x40 maps, fall less
    assert h["params"] < f["params"] and f["params"] / h["params"] > f["macs"] / h["macs"]
    x = torch.zeros(1, 3, 160, 160)
    assert [r.shape for r in heavy.raw(x)] == [r.shape for r in first.raw(x)]
    with pytest.raises(ValueError, match="dsconv"):
        MicroYolo(MicroYoloConfig(dsconv="middle"))
