"""Quantize stage: INT8 post-training quantization on ONNX (ONNX Runtime, QDQ), sensitivity, auto-calibration.

Submodules import onnxruntime lazily, so importing this package stays cheap.
"""

from edgekit.quantize.auto import AutoResult, auto_calibrate
from edgekit.quantize.calibrators import tensor_ranges
from edgekit.quantize.ptq import QuantResult, compare_calibrators, quantize_int8
from edgekit.quantize.sensitivity import layer_sensitivity

__all__ = [
    "AutoResult",
    "QuantResult",
    "auto_calibrate",
    "compare_calibrators",
    "layer_sensitivity",
    "quantize_int8",
    "tensor_ranges",
]
