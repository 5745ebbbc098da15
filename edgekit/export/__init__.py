"""Export stage: PyTorch -> ONNX with an FP32 parity check against ONNX Runtime."""

from edgekit.export.onnx import check_parity, export_onnx, load_checked, model_macs_params, onnx_info

__all__ = ["check_parity", "export_onnx", "load_checked", "model_macs_params", "onnx_info"]
