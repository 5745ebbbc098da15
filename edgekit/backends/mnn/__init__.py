"""MNN (Alibaba) on Arm CPUs: everything edgekit knows of MNN, in one package.

* :mod:`.backend`: the :class:`MnnBackend` (fp32, fp16 weights, INT8 from MNN's own quantizer) and its
  quantizer options.
* :mod:`.tools`: MNN's converter and quantizer, each run in a subprocess (no pip, no telemetry).
* :mod:`.runtime`: load and run a ``.mnn`` in this process.
* :mod:`.calib`: the calibration images as MNN's quantizer reads them.
* :mod:`.graph`: what a ``.mnn`` holds (MNN's JSON dump, summarised).
* :mod:`.floats`: convolutions of an INT8 ``.mnn`` kept in float (a detector's prediction convs).

The device-side runner is ``mnn_run.py`` here (the shared cores it imports are in ``edgekit/runners/``).
"""

from edgekit.backends.mnn.backend import (
    DEFAULT_METHOD,
    MnnBackend,
    MnnQuantizer,
    calibration_count,
    canvas_spec,
    tool_mean_normal,
)

__all__ = [
    "DEFAULT_METHOD",
    "MnnBackend",
    "MnnQuantizer",
    "calibration_count",
    "canvas_spec",
    "tool_mean_normal",
]
