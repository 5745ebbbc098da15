"""TensorRT on a Jetson: the engine is built *on the device* from an ONNX the host stages.

An engine is specific to the GPU and the TensorRT version that built it, so the host never builds one.
What the host does (``build_location = "device"``):

- INT8: the pipeline's quantize stage writes the QDQ ONNX in the form TensorRT's explicit quantization
  accepts (:func:`edgekit.backends.tensorrt.form.quantize_trt_qdq`: signed INT8, symmetric activations,
  per-channel weights on the output axis); :meth:`TensorRTBackend._check` refuses a QDQ model that
  breaks those rules (ONNX Runtime's default unsigned asymmetric QDQ, for one), naming each violation.
- :meth:`build` stages ``model.onnx`` (role ``source``) and checks it on the host with ONNX Runtime
  against FP32: that is the accuracy of the QDQ form, measured here.
- The agent then builds the engine on the board with ``trtexec`` (runner ``trt_run.py --build``),
  fetches it and completes the sidecar with its hash and the board's TensorRT version.

Nothing here needs TensorRT on the host; on a board without it the runner stops with one error
naming what to install (``trtcore.TRT_MISSING``), never a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from edgekit.backends.contract.artifact import DeviceBuild
from edgekit.backends.contract.base import (
    Artifact,
    Backend,
    BuildOptions,
    BuildOutput,
    BuildSource,
    Problem,
)
from edgekit.backends.onnxruntime.backend import (
    OrtQdq,
    _copy_model,
    checker_problems,
    require_module,
    unknown_op_problems,
)
from edgekit.backends.tensorrt.form import tensorrt_qdq_form
from edgekit.quantize.form import QdqForm

ENGINE_FILE = "model.engine"
SOURCE_FILE = "model.onnx"


class TrtQdq(OrtQdq):
    """How the staged INT8 ONNX was quantized: ONNX Runtime's record, in TensorRT's layout (no QAT export)."""

    method: Literal["minmax", "entropy", "percentile"] = "minmax"


class TensorRTBackend(Backend):
    """Stage a TensorRT build for a Jetson; the agent builds and times the engine on the board.

    Example:
        >>> backend = TensorRTBackend()
        >>> art = backend.build("det_trt_qdq.onnx", {"precision": "int8"}, "out/trt")  # doctest: +SKIP
        >>> art.device_build.state  # doctest: +SKIP
        'staged'
    """

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    build_location = "device"
    int8_source = "qdq"
    quantizer_options = TrtQdq
    methods = ("entropy", "minmax", "percentile")
    extra = None
    runner = "trt_run.py"
    runner_files = ("trtcore.py",)
    suffix = ".engine"
    calibration_export = "edgekit.backends.tensorrt.calib_export"

    def qdq_form(self, cpu: dict | None, source: str = "not stated") -> QdqForm:
        """TensorRT's explicit-quantization layout, whatever the Jetson's CPU."""
        return tensorrt_qdq_form()

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        problems = unknown_op_problems(model)
        if problems:
            return problems
        problems = checker_problems(onnx_path)
        quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        if options.precision == "int8" and not quantized:
            problems.append(
                Problem(
                    "error",
                    "precision int8 for TensorRT needs a QDQ ONNX in TensorRT's form; "
                    "this one has no Q/DQ nodes",
                    "quantize it with the tensorrt layout (edgekit deploy does; in Python: "
                    "edgekit.backends.tensorrt.form.quantize_trt_qdq)",
                )
            )
        elif options.precision == "int8":
            from edgekit.backends.tensorrt.form import check_trt_qdq

            violations = check_trt_qdq(model)
            if violations:
                more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
                problems.append(
                    Problem(
                        "error",
                        f"the QDQ ONNX is not in TensorRT's form ({len(violations)} violation(s)): "
                        + "; ".join(violations[:3])
                        + more,
                        "quantize the FP32 model with the tensorrt layout (edgekit deploy does; in Python: "
                        "edgekit.backends.tensorrt.form.quantize_trt_qdq), not with ONNX Runtime's defaults",
                    )
                )
        elif quantized:
            problems.append(
                Problem("error", f"the ONNX is quantized but precision {options.precision} was asked", "")
            )
        return problems

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        _copy_model(source.onnx, work_dir / SOURCE_FILE)
        flags = {"fp32": [], "fp16": ["fp16"], "int8": ["int8", "fp16"]}[options.precision]
        staged = DeviceBuild(state="staged", model_file=ENGINE_FILE, precision_flags=flags)
        return BuildOutput(
            files={"source": SOURCE_FILE},
            meta={"device_build": staged.model_dump(mode="json", exclude_none=True)},
        )

    def _load_check(self, artifact: Artifact) -> None:
        self._session(artifact)

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        """The staged ONNX in ONNX Runtime on this host (the engine itself only runs on the board)."""
        session = self._session(artifact)
        return session.run(None, {session.get_inputs()[0].name: x})

    def _session(self, artifact: Artifact) -> Any:
        ort = require_module("backend", self.name, "onnxruntime", None)
        return ort.InferenceSession(str(artifact.path("source")), providers=["CPUExecutionProvider"])

    def _tools(self) -> dict[str, str]:
        import onnx

        ort = require_module("backend", self.name, "onnxruntime", None)
        return {"onnxruntime (host check)": ort.__version__, "onnx": onnx.__version__}
