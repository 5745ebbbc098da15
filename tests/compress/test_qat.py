"""QAT: fake-quant model exports as QDQ ONNX, ORT runs it, and agrees with the torch fake-quant model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import torch

from edgekit.compress.qat import FakeQuantConv, QatStep, export_qdq, float_view
from edgekit.compress.recipe import QatSpec
from edgekit.export.onnx import model_macs_params, ort_session


def test_qat_exports_qdq_that_ort_runs_close_to_torch(model, make_ctx, val_split, tmp_path):
    spec = QatSpec(type="qat", epochs=1 / 8, lr=1e-4, distill=1.0)
    ctx = make_ctx(teacher=model)
    result = QatStep().apply(model, spec, ctx)
    qmodel = result.model
    wrapped = [m for m in qmodel.modules() if isinstance(m, FakeQuantConv)]
    assert len(wrapped) == 9 and result.extra["quantized_convs"] == 9
    assert all(not isinstance(p, FakeQuantConv) for p in qmodel.prediction_layers())
    float_cost = model_macs_params(model, ctx.input_shape)
    # same convs, BN folded away (the op counter charges BN a few MACs per element): within 1 %
    qat_macs = model_macs_params(float_view(qmodel), ctx.input_shape)["macs"]
    assert 0.99 * float_cost["macs"] <= qat_macs <= float_cost["macs"]
    path = result.export(qmodel, ctx.input_shape, tmp_path / "qat.onnx")
    assert result.export is export_qdq
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] >= 9 and ops["DequantizeLinear"] >= 9, ops
    session = ort_session(path)
    x, _, _ = val_split.batch(np.array([0]))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = qmodel(x).numpy()
    # int8 kernels vs float fake-quant: probabilities within 0.05, box coordinates within 2 px
    assert np.abs(got[..., 4:] - ref[..., 4:]).max() < 0.05
    assert np.abs(got[..., :4] - ref[..., :4]).max() < 2.0
