"""The contract every backend follows, shared by all of them and naming none.

``base`` (the :class:`Backend` class, build options, problems), ``artifact`` (the ``artifact.json``
sidecar), ``options`` (typed quantizer options), ``parity`` and ``agreement`` (the FP32 check, judged
by the detections), ``onnx_io`` (what an ONNX model declares) and ``int8_plan`` (how an INT8 artifact
is made).
"""
