"""edgekit: take a trained object detector to a measured deployment on edge hardware.

``import edgekit`` stays light: heavy runtimes (torch, onnxruntime, MNN, ...) are imported by the
modules that need them, when they need them.
"""

__version__ = "0.1.0"
