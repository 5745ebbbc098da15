"""Quantize stage: INT8 post-training quantization on ONNX (ONNX Runtime, QDQ), sensitivity, auto-calibration.

Submodules import onnxruntime lazily, so importing this package stays cheap.
"""

from edgekit.quantize.ptq import QuantResult, compare_calibrators, quantize_int8, tensor_ranges

__all__ = ["QuantResult", "compare_calibrators", "quantize_int8", "tensor_ranges"]
