"""OpenVINO (Intel) on x86 edge boxes and Arm CPUs: IR files, INT8 from NNCF.

* :mod:`.backend`: the :class:`OpenVinoBackend` (fp32 and fp16 IR, INT8 from NNCF's post-training
  quantization on the calibration set, the detector's prediction convs kept in float).
* :mod:`.nncf_ptq`: the NNCF call, with edgekit's head found in the ONNX graph.
* ``openvino_run.py``: the device-side runner (device, streams, threads and precision from
  ``artifact.json``; per-layer times from OpenVINO's profiling counters).
"""

from edgekit.backends.openvino.backend import OpenVinoBackend, OvQuantizer

__all__ = ["OpenVinoBackend", "OvQuantizer"]
