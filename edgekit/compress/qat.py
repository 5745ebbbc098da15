"""Quantization-aware training: fake-quant INT8 convs trained briefly, exported as a QDQ ONNX for ORT.

Recipe: fold every Conv+BN into one conv (what the runtimes execute), wrap each conv except the prediction
convs in :class:`FakeQuantConv` (per-tensor asymmetric uint8 input activations, per-channel symmetric int8
weights, straight-through gradients), calibrate the activation ranges on training images, then fine-tune
with a small learning rate while the ranges follow an exponential moving average. ``torch.onnx.export``
(TorchScript exporter, ``dynamo=False``) turns the fake-quant ops into QuantizeLinear/DequantizeLinear pairs,
which ONNX Runtime runs as INT8 kernels.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgekit.compress.finetune import finetune
from edgekit.compress.graph import prediction_layers
from edgekit.compress.step import Step, StepResult
from edgekit.core.errors import BuildError
from edgekit.export.onnx import export_onnx


class FakeQuantConv(nn.Module):
    """A conv whose input activation and weights pass through INT8 fake quantization."""

    def __init__(self, conv: nn.Conv2d, momentum: float = 0.05) -> None:
        super().__init__()
        self.conv, self.momentum = conv, momentum
        self.register_buffer("act_range", torch.tensor([0.0, 0.0]))
        self.register_buffer("w_scale", self._weight_scale())
        self.observing = False

    def _weight_scale(self) -> torch.Tensor:
        return self.conv.weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127.0

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.observing or float(self.act_range[1] - self.act_range[0]) == 0.0:
            self.act_range[0] = min(float(self.act_range[0]), lo)
            self.act_range[1] = max(float(self.act_range[1]), hi)
        else:
            m = self.momentum
            self.act_range[0] = (1 - m) * self.act_range[0] + m * min(lo, 0.0)
            self.act_range[1] = (1 - m) * self.act_range[1] + m * max(hi, 0.0)

    def act_qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the uint8 input quantizer; the range always contains 0."""
        lo, hi = min(float(self.act_range[0]), 0.0), max(float(self.act_range[1]), 0.0)
        scale = max(hi - lo, 1e-8) / 255.0
        return scale, int(np.clip(round(-lo / scale), 0, 255))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        if self.training or self.observing:
            self._observe(x)
            self.w_scale.copy_(self._weight_scale())
        scale, zero = self.act_qparams()
        xq = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
        zeros = torch.zeros(self.conv.out_channels, dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, zeros, 0, -128, 127)
        return self.conv._conv_forward(xq, wq, self.conv.bias)


def float_view(model: nn.Module) -> nn.Module:
    """A copy of a fake-quant model with every :class:`FakeQuantConv` replaced by its float conv.

    Used to count MACs/params (the wrapper calls the conv functionally, which op counters do not see) and
    for the FP32 export of a QAT run. Other models are returned unchanged.
    """
    if not any(isinstance(m, FakeQuantConv) for m in model.modules()):
        return model
    view = copy.deepcopy(model)
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantConv):
                setattr(parent, name, child.conv)
    return view


def fold_batchnorms(model: nn.Module) -> int:
    """Fold each Conv2d directly followed by a BatchNorm2d (in a Sequential), in place; return how many."""
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i].eval(), seq[i + 1].eval())
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def wrap_convs(model: nn.Module) -> int:
    """Replace every conv except the prediction convs by a :class:`FakeQuantConv`; return how many.

    A user's model (:class:`~edgekit.models.foreign.ForeignDetector`) keeps only its head convs float: the
    convs it pins against pruning (cut by channel slices) are quantized like any other.
    """
    head = getattr(model, "head_convs", None)
    protected = {id(m) for m in (head() if head else prediction_layers(model))}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and id(child) not in protected:
                setattr(parent, name, FakeQuantConv(child))
                count += 1
    return count


@torch.no_grad()
def calibrate(model: nn.Module, data: Any, images: int = 64, batch_size: int = 16) -> None:
    """Set every activation range to the min/max seen on the first ``images`` training images."""
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantConv)]
    for q in quantizers:
        q.observing = True
    model.eval()
    for start in range(0, min(images, len(data)), batch_size):
        x, _, _ = data.batch(np.arange(start, min(start + batch_size, images, len(data))))
        model(x)
    for q in quantizers:
        q.observing = False


def prepare_qat(model: nn.Module, data: Any) -> nn.Module:
    """A calibrated fake-quant copy of ``model`` (BN folded), ready for QAT or export."""
    qmodel = copy.deepcopy(model).eval()
    fold_batchnorms(qmodel)
    wrap_convs(qmodel)
    calibrate(qmodel, data)
    return qmodel


def export_qdq(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export a fake-quant model as a QDQ ONNX (the pipeline's replacement for PTQ after QAT).

    Raises:
        BuildError: The export has no QuantizeLinear/DequantizeLinear nodes (the model was not prepared).

    Example:
        >>> export_qdq(qat_model, (1, 3, 160, 160), "out/model_qdq.onnx")  # doctest: +SKIP
    """
    import onnx

    if hasattr(model, "forward_with_maps"):  # a user's model: its own input / output names and metadata
        from edgekit.models.foreign import export_foreign

        path = export_foreign(model, path)
    else:
        with warnings.catch_warnings():
            # the quantizer ranges become constants of the graph, which is exactly what a QDQ export wants
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            path = export_onnx(model, input_shape, path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    if "QuantizeLinear" not in ops or "DequantizeLinear" not in ops:
        raise BuildError(
            f"{path} has no QuantizeLinear/DequantizeLinear nodes",
            "export the model returned by the qat step (edgekit.compress.qat.prepare_qat)",
        )
    return path


class QatStep(Step):
    """Fake-quant INT8 fine-tune; hands back ``export_qdq`` as the model's exporter."""

    type = "qat"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"QAT int8, {spec.epochs:g} ep" + (f", distill x{spec.distill:g}" if spec.distill else "")

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        qmodel = prepare_qat(model, ctx.train)
        stats = finetune(qmodel, spec, ctx, "quantization-aware training")
        wrapped = sum(isinstance(m, FakeQuantConv) for m in qmodel.modules())
        return StepResult(
            qmodel.eval(), extra={"train": stats, "quantized_convs": wrapped}, export=export_qdq
        )
