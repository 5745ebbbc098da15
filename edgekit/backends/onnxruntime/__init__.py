"""ONNX Runtime on the CPU: the backend of the ``local`` target and of x86/Arm boards with a Python.

* :mod:`.backend`: the :class:`OnnxRuntimeBackend` (fp32, fp16, INT8 from a QDQ ONNX made by
  :mod:`edgekit.quantize` in the form the device's CPU wants).

The device-side runner is ``ort_run.py`` here (the shared cores it imports are in ``edgekit/runners/``).
"""

from edgekit.backends.onnxruntime.backend import OnnxRuntimeBackend, OrtQdq

__all__ = ["OnnxRuntimeBackend", "OrtQdq"]
