"""TensorRT on a Jetson's GPU: everything edgekit knows of TensorRT, in one package.

* :mod:`.backend`: the :class:`TensorRTBackend` (the engine is built on the board with ``trtexec``;
  the host stages and checks the QDQ ONNX it is built from).
* :mod:`.form`: the QDQ form TensorRT's explicit quantization accepts (signed symmetric INT8).
* :mod:`.cache`: TensorRT's calibration-cache file (``edgekit calib export --format tensorrt``).

The device-side runners are ``trt_run.py`` and ``trtcore.py`` here.
"""

from edgekit.backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
