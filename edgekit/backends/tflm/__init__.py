"""TensorFlow Lite Micro on Cortex-M boards: everything edgekit knows of TFLM, in one package.

* :mod:`.backend`: the :class:`TflmBackend` (a full-int8 ``.tflite`` from LiteRT's PT2E quantizer, a
  C bundle for the firmware, an arena fitted to the board).
* :mod:`.io`: the model's input/output tensors and what the firmware must do with them.
* :mod:`.bundle`: the C sources (model array, op resolver, I/O description).
* ``converters/``: the scripts run in the TFLite environment (``.venv-tflite``) through a subprocess.

The device-side runners are ``tflm_run.py`` and ``mcu_serial_run.py`` here.
"""

from edgekit.backends.tflm.backend import CONVERTER, TflmBackend, _check_ops, converter_python

__all__ = ["CONVERTER", "TflmBackend", "_check_ops", "converter_python"]
