"""Issue 43, step 1: a real, float YOLO-family ONNX becomes a trainable torch module torch-pruning can prune.

The module's convs are ``nn.Conv2d`` with the exported weights; it reproduces ONNX Runtime's FP32 outputs
on real photographs; a C2f's split conv becomes one conv per half (the same numbers); and torch-pruning's
dependency graph prunes the backbone and neck while the prediction convs keep their channels, so the
output layout and the decode survive.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.realmodels.conftest import real_model

torch = pytest.importorskip("torch")


def _module(name: str, tmp_path):
    import onnx

    from edgekit.export.onnx_torch import OnnxModule
    from edgekit.models.user import inspect_onnx, static_copy

    det = inspect_onnx(real_model(name))
    path = det.path if det.static else static_copy(det, tmp_path / "static.onnx")
    return OnnxModule(onnx.load(str(path)), trainable=True).eval(), det, path


def _photos(size: int, count: int = 2) -> np.ndarray:
    """Real photographs (scikit-image's), letterboxed to the model's input, NCHW 0..1."""
    import skimage.data

    from edgekit.data.preprocess import PreprocessSpec, letterbox, to_tensor

    spec = PreprocessSpec(input_size=size)
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()][:count]
    return np.concatenate([to_tensor(letterbox(img, spec)[0], spec) for img in images])


@pytest.mark.parametrize("name", ["nudenet-yolov8n", "ddddocr-yolox", "vectron-yolo11n"])
def test_the_trainable_module_reproduces_onnx_runtime(name, tmp_path):
    from edgekit.export.onnx import ort_session

    module, det, path = _module(name, tmp_path)
    x = _photos(det.preprocess.input_size)
    session = ort_session(path)
    feed = session.get_inputs()[0].name
    with torch.no_grad():
        for i in range(len(x)):
            ref = session.run(None, {feed: x[i : i + 1]})[0]
            got = module(torch.from_numpy(x[i : i + 1]))[0].numpy()
            # float32 arithmetic in another order: errors of a few 1e-6 of the output's range
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(p.requires_grad for p in module.parameters())
    assert len(list(module.parameters())) >= 2 * len(convs) - 1  # weights and biases are parameters


def test_each_c2f_split_becomes_one_conv_per_half(tmp_path):
    """The outputs stay the same numbers: the reproduction test above runs the rewritten graph."""
    module, _, _ = _module("nudenet-yolov8n", tmp_path)
    assert module.splits_rewritten == 8  # the YOLOv8n's C2f blocks (backbone 4, neck 4)


@pytest.mark.parametrize("name", ["nudenet-yolov8n", "ddddocr-yolox"])
def test_torch_pruning_prunes_it_and_the_head_keeps_its_layout(name, tmp_path):
    import onnx
    import torch_pruning as tp

    from edgekit.quantize import graph as qgraph

    module, det, path = _module(name, tmp_path)
    heads = set(qgraph.prediction_convs(qgraph.ensure_node_names(onnx.load(str(path)))))
    ignored = [module.convs[k] for k in module.convs if module.conv_node(k) in heads]
    assert ignored, "the prediction convs were found"
    widths = [m.out_channels for m in ignored]
    size = det.preprocess.input_size
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        before_shape = tuple(module(x)[0].shape)
    macs, params = tp.utils.count_ops_and_params(module, x)
    pruner = tp.pruner.MagnitudePruner(
        module, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.25,
        ignored_layers=ignored, output_transform=lambda out: out[0].sum(),
    )  # fmt: skip
    pruner.step()
    macs2, params2 = tp.utils.count_ops_and_params(module, x)
    assert macs / macs2 >= 1.5 and params / params2 >= 1.5
    assert [m.out_channels for m in ignored] == widths  # the head's layout and decode survive
    out = module(x)[0]
    assert tuple(out.shape) == before_shape
    out.float().abs().mean().backward()  # it trains: gradients reach the pruned convs
    assert all(m.weight.grad is not None for m in module.convs.values())
