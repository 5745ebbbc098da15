"""ONNX Runtime (CPU execution provider): the backend every host has, and the reference for the others.

fp32 copies the exported ONNX; int8 takes a QDQ ONNX made by ``edgekit.quantize`` in the form
:meth:`OnnxRuntimeBackend.qdq_form` asks for on the device's CPU, and records how it was made
(:class:`OrtQdq`) in ``artifact.json``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Literal

from edgekit.backends.contract.base import (
    Artifact,
    Backend,
    BuildOptions,
    BuildOutput,
    BuildSource,
    Problem,
    QuantizerOptions,
)
from edgekit.core.registry import require_module
from edgekit.quantize.form import QdqForm, ort_qdq_form

#: ONNX domains whose schemas ``onnx.defs`` knows; ORT's own contrib domains are left to the session.
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")
_QDQ_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}

# How ORT names the offending op in session-creation errors (seen in onnxruntime 1.2x-1.3x).
_ORT_OP_PATTERNS = (
    re.compile(r"implementation for (\w+)\(\d+\)"),  # known op, unsupported type combination
    re.compile(r"[\w.]*:(\w+)\(-?\d+\) is not a registered function/op"),  # unknown custom op
    re.compile(r"In Node, \(\"[^\"]*\", (\w+),"),  # graph-level validation of one node
    re.compile(r"of operator \((\w+)\)"),  # type error on an input
    re.compile(r"No Op registered for (\w+)"),
)
_HINT = "replace the op in the model (or export with a different opset), or pick another backend"


class OrtQdq(QuantizerOptions):
    """How the QDQ ONNX of an ONNX Runtime INT8 artifact was made (``edgekit.quantize`` or QAT).

    Attributes:
        method: ``minmax``, ``entropy``, ``percentile`` or ``qat``.
        per_channel: Per-output-channel weight scales.
        weight_bits: 7 (``reduce_range``) or 8.
        weight_range_reason: Why that many bits (the device's CPU).
        keep_float: Nodes kept in float.
        scales_sha256: Hash of the activation scales (differs when calibrators really differ).
        quantized_nodes: Nodes computing in INT8.
    """

    method: Literal["minmax", "entropy", "percentile", "qat"] = "minmax"
    per_channel: bool = True
    weight_bits: Literal[7, 8] = 8
    weight_range_reason: str = ""
    keep_float: list[str] = []
    scales_sha256: str | None = None
    quantized_nodes: int | None = None


class OnnxRuntimeBackend(Backend):
    """Build ``model.onnx`` artifacts for ONNX Runtime's CPU execution provider.

    Example:
        >>> backend = OnnxRuntimeBackend()
        >>> art = backend.build("det.onnx", {"precision": "fp32", "threads": 2}, "out/ort")  # doctest: +SKIP
        >>> art.meta["runner"]  # doctest: +SKIP
        'ort_run.py'
    """

    name = "onnxruntime"
    precisions = ("fp32", "int8")
    build_location = "host"
    int8_source = "qdq"
    quantizer_options = OrtQdq
    methods = ("minmax", "entropy", "percentile")
    extra = None
    board_packages = ("onnxruntime",)
    runner = "ort_run.py"
    suffix = ".onnx"
    calibration_export = "edgekit.backends.onnxruntime.calib_export"

    def qdq_form(self, cpu: dict | None, source: str = "not stated") -> QdqForm:
        """The QDQ form for ONNX Runtime on the device's CPU: 7-bit weights on x86 without VNNI."""
        return ort_qdq_form(cpu, source)

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        problems = unknown_op_problems(model)
        if problems:
            return problems  # the checker and the session would only fail on the same ops, less clearly
        problems = checker_problems(onnx_path) + precision_problems(model, options.precision)
        if any(p.severity == "error" for p in problems):
            return problems
        return problems + session_problems(onnx_path)

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        model_file = f"model{self.suffix}"
        _copy_model(source.onnx, work_dir / model_file)
        return BuildOutput(files={"model": model_file})

    def _load_check(self, artifact: Artifact) -> None:
        self._session(artifact)

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        session = self._session(artifact)
        return session.run(None, {session.get_inputs()[0].name: x})

    def _session(self, artifact: Artifact) -> Any:
        ort = require_module("backend", self.name, "onnxruntime", self.extra)
        return ort.InferenceSession(str(artifact.path("model")), providers=["CPUExecutionProvider"])

    def _tools(self) -> dict[str, str]:
        import onnx

        ort = require_module("backend", self.name, "onnxruntime", self.extra)
        return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}


def _copy_model(src: Path, dst: Path) -> None:
    """Copy the ONNX file; a model with external data is re-saved as one self-contained file."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    has_external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    if has_external:
        onnx.save(onnx.load(str(src)), str(dst))
    else:
        shutil.copyfile(src, dst)


def unknown_op_problems(model: Any) -> list[Problem]:
    """Name nodes whose (domain, op type) no schema knows at the model's opset."""
    from onnx import defs

    opsets = {o.domain or "": o.version for o in model.opset_import}
    unknown: dict[str, list[str]] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in _ORT_DOMAINS:
            continue
        if domain in _ONNX_DOMAINS and _has_schema(defs, node.op_type, opsets.get(domain, 0), domain):
            continue
        label = node.op_type if domain in _ONNX_DOMAINS else f"{domain}:{node.op_type}"
        unknown.setdefault(node.op_type, []).append(f"{label} (node '{node.name}')")
    return [
        Problem("error", f"onnxruntime has no kernel for {', '.join(where[:3])}", _HINT, (op,))
        for op, where in unknown.items()
    ]


def _has_schema(defs: Any, op_type: str, version: int, domain: str) -> bool:
    try:
        defs.get_schema(op_type, max_inclusive_version=max(version, 1), domain=domain)
    except defs.SchemaError:
        return False
    return True


def checker_problems(onnx_path: Path) -> list[Problem]:
    """Run ``onnx.checker`` on the file (by path, so models > 2 GB work)."""
    import onnx

    try:
        onnx.checker.check_model(str(onnx_path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        return [Problem("error", f"onnx.checker rejects {onnx_path.name}: {first}", "re-export the model")]
    return []


def precision_problems(model: Any, precision: str) -> list[Problem]:
    """An int8 build needs a quantized graph; an fp32 build must not carry one (the label would lie)."""
    quantized = any(node.op_type in _QDQ_OPS for node in model.graph.node)
    if precision == "int8" and not quantized:
        return [
            Problem(
                "error",
                "precision int8 needs a quantized (QDQ) ONNX, this one has no "
                "QuantizeLinear/DequantizeLinear nodes",
                "run `edgekit quantize` first",
            )
        ]
    if precision == "fp32" and quantized:
        return [
            Problem(
                "error",
                "the ONNX is quantized (QDQ nodes) but precision fp32 was asked",
                "build it with precision int8, or pass the float model",
            )
        ]
    return []


def session_problems(onnx_path: Path) -> list[Problem]:
    """Create a CPU session: whatever ORT refuses becomes a problem naming the op type(s)."""
    ort = require_module("backend", "onnxruntime", "onnxruntime", None)
    try:
        ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail / InvalidGraph / NotImplemented (pybind types)
        text = str(exc).strip()
        ops = tuple(sorted({m.group(1) for pat in _ORT_OP_PATTERNS for m in pat.finditer(text)}))
        message = f"onnxruntime {ort.__version__} cannot load the model: {text[-400:]}"
        return [Problem("error", message, _HINT if ops else "re-export the model", ops)]
    return []
