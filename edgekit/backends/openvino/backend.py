"""OpenVINO: ``model.xml`` + ``model.bin`` (IR) for the CPU plugin of x86 edge boxes and Arm boards.

* **fp32** is the ONNX read by OpenVINO's ONNX frontend and saved as IR with fp32 weights. The runner
  asks for f32 inference precision: OpenVINO's default on a CPU with bf16 (AVX-512 BF16, AMX) is bf16,
  which would compute an "fp32" artifact in bf16 without saying so (measured here: max error 1.5 px vs
  ONNX Runtime, 2e-4 with f32).
* **fp16** stores the weights in fp16 (half the file) and asks for f16 inference where the CPU has it;
  the runner reports the precision it really ran in. The host check computes in f32.
* **int8** is NNCF's post-training quantization on the calibration set (:mod:`.nncf_ptq`), with the
  detector's prediction convs and decode kept in float (the ONNX graph's head, as for ONNX Runtime).
  The build counts the convolutions the compiled model runs in u8/i8 and refuses an "INT8" artifact
  with none. When no range estimator keeps the detections, ``edgekit build`` keeps one more head level
  in float, then bypasses the activation quantizers that cost the detections most (ranked in OpenVINO,
  :mod:`.sensitivity`), then tries NNCF's accuracy control (:attr:`OpenVinoBackend.fallback`).
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgekit.backends.contract.base import (
    Artifact,
    Backend,
    BuildOptions,
    BuildOutput,
    BuildSource,
    Problem,
    QuantizerOptions,
)
from edgekit.backends.openvino.nncf_ptq import (
    METHODS,
    AccuracyControl,
    fp32_outputs,
    quantize,
    read_onnx,
    runtime_precisions,
)
from edgekit.backends.openvino.sensitivity import activation_quantizers, bypass, rank_quantizers
from edgekit.core.errors import BuildError, ConfigError, MissingExtraError
from edgekit.core.files import sha256_file
from edgekit.core.progress import track

FILES = {"model": "model.xml", "weights": "model.bin"}
#: The precision the runner asks OpenVINO's CPU plugin for, per artifact precision.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
#: Calibration images an activation quantizer's INT8 cost is measured on (``float_ranked``).
RANK_IMAGES = 8
_UNSUPPORTED = re.compile(r"(?:not supported|unsupported|No conversion rule)[^\n]*?([A-Z][A-Za-z0-9_]+)")
_OP_HINT = "replace the op in the model (or export with another opset), or pick another backend"


class OvQuantizer(QuantizerOptions):
    """How NNCF quantizes an OpenVINO INT8 artifact, and what the build made.

    Attributes:
        method: How NNCF sets each activation's range: ``mean_minmax`` (NNCF's default: the means over
            the calibration images of each image's smallest and largest value, which clips outliers) or
            ``minmax`` (the extremes over all images). Weights are per-channel symmetric, activations
            asymmetric (NNCF's ``mixed`` preset: SiLU outputs are not symmetric). Measured on the real
            models of issue 41 (96 photo crops, head in float): mean score error 0.038 (mean_minmax) vs
            0.07 (minmax) on the YOLOv8n, 0.057 vs 0.090 on the YOLOX.
        images: Calibrate on the first ``images`` images of the set; ``None`` = every image (NNCF's
            ``subset_size``).
        fast_bias_correction: NNCF's fast bias correction (``False``: the full one, slower).
        float_head: Keep the prediction convs and the decode in float (found in the ONNX graph).
        float_head_depth: With ``float_head``, also keep in float the convs that reach a prediction conv
            through fewer than this many other convs (``edgekit build`` raises it when no method keeps
            the detections: :attr:`OpenVinoBackend.fallback`).
        keep_float: More ONNX node names to keep in float.
        float_ranked: Also bypass this many of NNCF's activation quantizers, those whose INT8 alone costs
            the detections most (:mod:`.sensitivity`: each kept alone, measured in OpenVINO on
            ``RANK_IMAGES`` calibration images); the layers they feed compute in float. ``edgekit
            build`` raises it when no method keeps the detections (:attr:`OpenVinoBackend.fallback`).
        accuracy_control: Use NNCF's accuracy-controlled quantization: it ranks the quantized layers by
            their effect on edgekit's detection metric (per image: the share of FP32's detections kept
            minus their mean score error, on up to 16 calibration images) and puts the worst back to
            float until the metric drops by at most ``max_metric_drop``. ``edgekit build`` tries it
            when no method keeps the detections (:attr:`OpenVinoBackend.fallback`).
        max_metric_drop: The drop ``accuracy_control`` allows.
        sensitivity: The ranking ``float_ranked`` used: metric and the costliest quantizers (written by
            the build).
        float_layers: Convolutions the compiled model runs in float (written by the build).
        float_why: Why they are float (written by the build; the report prints it).
        quantized_layers: Convolutions it runs in INT8 (written by the build).
    """

    method: Literal["mean_minmax", "minmax"] = "mean_minmax"
    images: int | None = Field(None, ge=1)
    fast_bias_correction: bool = True
    float_head: bool = True
    float_head_depth: int = Field(0, ge=0, le=8)
    keep_float: list[str] = []
    float_ranked: int = Field(0, ge=0, le=64)
    accuracy_control: bool = False
    max_metric_drop: float = Field(0.03, gt=0, le=0.5)
    sensitivity: dict[str, Any] | None = None
    float_layers: list[str] | None = None
    float_why: str | None = None
    quantized_layers: int | None = None


class OpenVinoBackend(Backend):
    """Build OpenVINO IR artifacts (``model.xml`` + ``model.bin``) for its CPU plugin.

    Example:
        >>> backend = OpenVinoBackend()
        >>> art = backend.build("det.onnx", {"precision": "int8"}, "out/ov", calib=cs)  # doctest: +SKIP
        >>> art.meta["quantization"]["quantized_layers"] > 0  # doctest: +SKIP
        True
    """

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    build_location = "host"
    int8_source = "calibration"
    quantizer_options = OvQuantizer
    methods = METHODS
    #: Quantizer settings ``edgekit build`` tries in turn when no method keeps the detections.
    fallback = ({"float_head_depth": 1}, {"float_ranked": 4}, {"float_ranked": 8}, {"accuracy_control": True})
    min_calibration_images = 1
    extra = "openvino"
    board_packages = ("openvino",)
    runner = "openvino_run.py"
    suffix = ".xml"

    #: Rankings of ``float_ranked`` kept for the process (the search's successive counts rank once).
    _rankings: ClassVar[dict[tuple[Any, ...], list[tuple[str, float]]]] = {}

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str], Any] = {}
        self._nncf: str | None = None  # NNCF's version when the last build was its INT8
        self._sensitivity: dict[str, Any] | None = None  # the last INT8 build's float_ranked ranking

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        ov = _import_openvino()
        try:
            ov.Core().read_model(str(onnx_path))
        except Exception as exc:  # OpenVINO's frontends raise RuntimeError / OpConversionFailure
            text = " ".join(str(exc).split())
            ops = tuple(sorted(set(_UNSUPPORTED.findall(text)) & {n.op_type for n in model.graph.node}))
            return [
                Problem(
                    "error", f"OpenVINO {ov.__version__} cannot read the model: {text[-400:]}", _OP_HINT, ops
                )
            ]
        return []

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        ov = _import_openvino()
        onnx_path = source.onnx
        meta: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix=".nncf.", dir=work_dir) as tmp:
            self._nncf = None
            if options.precision == "int8":
                model = self._quantize(source, options, Path(tmp))
                self._nncf = sys.modules["nncf"].__version__
            else:
                model = ov.Core().read_model(str(onnx_path))
            shape = options.preprocess.input_shape() if options.preprocess else None
            if shape is not None and model.inputs[0].get_partial_shape().is_dynamic:
                model.reshape({model.inputs[0].get_any_name(): shape})
            ov.save_model(model, str(work_dir / FILES["model"]), compress_to_fp16=options.precision == "fp16")
        compiled = _compile(ov, work_dir / FILES["model"], threads=1)
        precisions = runtime_precisions(compiled)
        meta["openvino"] = {"convolutions": {k: len(v) for k, v in sorted(precisions.items())}}
        meta["runtime"] = {
            "device": "CPU",
            "inference_precision": INFERENCE_PRECISION[options.precision],
            "num_streams": 1,
            "performance_hint": "LATENCY",
        }
        if options.precision == "int8":
            int8 = [n for p in ("u8", "i8") for n in precisions.get(p, [])]
            if not int8 and self._sensitivity:
                raise BuildError(
                    f"bypassing {len(self._sensitivity['bypassed'])} activation quantizers (float_ranked) "
                    f"left no convolution of the model in INT8 ({meta['openvino']})",
                    "build fp32 or fp16 (--precision): too little of this model is INT8 to be worth it",
                )
            if not int8:
                raise BuildError(
                    f"OpenVINO runs no convolution of the model in INT8 on this CPU ({meta['openvino']})",
                    "build fp32 or fp16 (--precision): this CPU plugin has no INT8 kernels for it",
                )
            floats = sorted(n for p, names in precisions.items() if p not in ("u8", "i8") for n in names)
            why = "the detector's prediction convolutions and decode" if options.quantizer.float_head else ""
            if options.quantizer.float_ranked:
                why += (" and " if why else "") + (
                    f"the layers fed by the {options.quantizer.float_ranked} activation quantizers whose "
                    f"INT8 alone costs the detections most (on {RANK_IMAGES} calibration images)"
                )
            if options.quantizer.accuracy_control:
                why += (" and " if why else "") + "the layers NNCF's accuracy control put back to float"
            results = {
                "quantized_layers": len(int8), "float_layers": floats, "float_why": why or None,
                "sensitivity": self._sensitivity,
            }  # fmt: skip
            meta["quantization"] = options.quantizer.model_copy(update=results).model_dump(mode="json")
        return BuildOutput(files=dict(FILES), meta=meta)

    def _quantize(self, source: BuildSource, options: BuildOptions, tmp: Path) -> Any:
        import onnx

        from edgekit.quantize import graph as qgraph

        quantizer, calib = options.quantizer, source.calib
        images = quantizer.images  # not more than the set holds: Backend._with_calibration checks
        model = qgraph.ensure_node_names(onnx.load(str(source.onnx)))
        unknown = qgraph.unknown_nodes(model, quantizer.keep_float)
        if unknown:
            raise ConfigError(
                f"quantizer keep_float names no node of the model: {', '.join(unknown)}",
                "use ONNX node names (e.g. from Netron), such as "
                + ", ".join(qgraph.prediction_convs(model)[:3]),
            )
        head: list[str] = []
        if quantizer.float_head:
            head = qgraph.keep_float_auto(model)
            head += qgraph.feeding_convs(model, qgraph.prediction_convs(model), quantizer.float_head_depth)
        ignored = list(dict.fromkeys([*head, *quantizer.keep_float]))
        named = tmp / "named.onnx"
        onnx.save(model, str(named))
        arrays = _arrays(calib, options.preprocess, images)
        int8 = quantize(
            named, arrays, method=quantizer.method, subset_size=images or calib.count,
            fast_bias_correction=quantizer.fast_bias_correction, ignored=ignored,
            control=self._control(options),
        )  # fmt: skip
        self._sensitivity = None
        if quantizer.float_ranked:
            ranking = self._ranking(int8, named, (arrays, calib), options, ignored)
            chosen = [name for name, _ in ranking[: quantizer.float_ranked]]
            bypass(int8, set(chosen))
            self._sensitivity = {
                "metric": "mean |score error| of FP32's active anchors, the quantizer alone in INT8",
                "images": RANK_IMAGES,
                "bypassed": chosen,
                "top": [{"quantizer": n, "cost": round(c, 5)} for n, c in ranking[:32]],
            }
        return int8

    def _ranking(
        self, int8: Any, named: Path, calibration: tuple, options: BuildOptions, ignored: list[str]
    ) -> list[tuple[str, float]]:
        """The ranking for this model, calibration set and quantizer settings (kept for the process).

        ``calibration``: (a fresh-iterator factory of the set's preprocessed arrays, the set).
        """
        from edgekit.quantize.sensitivity import detection_metric

        if options.head is None:
            raise ConfigError(
                "float_ranked ranks quantizers by their effect on the detections; the output layout is "
                "unknown",
                "give --head (yolov5, yolov8 or yolox)",
            )
        quantizer, (arrays, calib) = options.quantizer, calibration
        spec = options.preprocess.model_dump_json() if options.preprocess else None
        key = (
            sha256_file(named), calib.sha256, quantizer.images, spec, quantizer.method,
            quantizer.fast_bias_correction, tuple(ignored), options.head,
        )  # fmt: skip
        if key not in self._rankings:
            images = [
                np.ascontiguousarray(x, dtype=np.float32)
                for _, x in zip(range(RANK_IMAGES), arrays(), strict=False)
            ]
            reference = fp32_outputs(read_onnx(named), images)
            total = len(activation_quantizers(int8))
            with track(total, "OpenVINO: ranking activation quantizers by their INT8 cost") as advance:
                self._rankings[key] = rank_quantizers(
                    int8, reference, images, detection_metric(options.head), lambda: advance()
                )
        return self._rankings[key]

    @staticmethod
    def _control(options: BuildOptions) -> AccuracyControl | None:
        quantizer = options.quantizer
        if not quantizer.accuracy_control:
            return None
        if options.head is None:
            raise ConfigError(
                "accuracy_control measures the detections, but the model's output layout is unknown",
                "give --head (yolov5, yolov8 or yolox)",
            )
        return AccuracyControl(options.head, max_drop=quantizer.max_metric_drop)

    def _load_check(self, artifact: Artifact) -> None:
        self._compiled_model(artifact)

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        compiled = self._compiled_model(artifact)
        request = compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return [np.array(request.get_output_tensor(i).data, copy=True) for i in range(len(compiled.outputs))]

    def _compiled_model(self, artifact: Artifact) -> Any:
        key = (str(artifact.path("model")), artifact.meta["sha256"][artifact.meta["files"]["model"]])
        if key not in self._compiled:
            self._compiled = {key: _compile(_import_openvino(), artifact.path("model"), threads=1)}
        return self._compiled[key]

    def _tools(self) -> dict[str, str]:
        ov = _import_openvino()
        tools = {"openvino": ov.__version__.split("-")[0]}
        if self._nncf:  # NNCF made this artifact (importing it for an fp32 build would pull torch: ~2 s)
            tools["nncf"] = self._nncf
        return tools


def _import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingExtraError(
            f"backend 'openvino' needs the openvino package ({exc})", "pip install 'edgekit[openvino]'"
        ) from exc
    return ov


def _compile(ov: Any, xml: Path, threads: int) -> Any:
    """Compile for the host's CPU in f32 (what the FP32 check compares), ``threads`` threads."""
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)}
    return ov.Core().compile_model(str(xml), "CPU", config)


def _arrays(calib: Any, spec: Any, limit: int | None) -> Callable[[], Iterable[np.ndarray]]:
    return lambda: calib.arrays(limit=limit, spec=spec)
