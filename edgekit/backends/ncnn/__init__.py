"""ncnn (Tencent) on Arm CPUs: everything edgekit knows of ncnn, in one package.

* :mod:`.backend`: the :class:`NcnnBackend` (fp32, fp16, INT8 from edgekit's ncnn2table-equivalent
  calibration) and its quantizer options.
* :mod:`.convert`: pnnx (ONNX or TorchScript to ``.param``/``.bin``) and ncnn's Python runtime.
* :mod:`.focus`: a Focus layer (strided slices) rewritten as one convolution before pnnx.
* :mod:`.format`: ncnn's ``.param``/``.bin`` files, read and written.
* :mod:`.calibration`: activation and weight scales (KL, ACIQ).
* :mod:`.int8`: the INT8 model (``ncnn2int8``'s job) from those scales.

The device-side runner is ``ncnn_run.py`` here (the shared cores it imports are in ``edgekit/runners/``).
"""

from edgekit.backends.ncnn.backend import NcnnBackend, NcnnQuantizer

__all__ = ["NcnnBackend", "NcnnQuantizer"]
