"""ncnn (Tencent) on Arm CPUs: pnnx converts the model, edgekit's own ncnn2table/ncnn2int8 make INT8.

* **fp32** is pnnx with ``fp16=0``; the runner turns fp16 storage and arithmetic *off*, because ncnn's
  defaults would compute an fp32 model in fp16 on an ARMv8.2 board without saying so.
* **fp16** is pnnx's fp16 weight storage with ncnn's fp16 storage, packing and arithmetic on (used
  where the CPU has them; on x86 the host check computes in fp32, so fp16 arithmetic error is only
  seen on the board).
* **int8** is the fp32 conversion calibrated on the calibration set with KL or ACIQ
  (:func:`edgekit.backends.ncnn.int8.build_int8`); layers left in float store fp16 weights, as
  ncnn2int8 does, and compute in fp32. The runner must set ``opt.use_int8_inference`` or ncnn outputs
  NaN, so the sidecar's ``runtime`` block says which flags to set.

pnnx prefers a TorchScript trace (its ONNX path lost a DFL head's ReduceSum axes); ``build`` takes one
with ``torch_program=`` and the sidecar records which path was used. ncnn renames the blobs ``in0`` /
``out0`` and drops the batch dim; the sidecar's ``ncnn`` block names the blobs the runner reads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
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
    dims,
    graph_inputs,
)
from edgekit.backends.ncnn.calibration import MIN_IMAGES, QUANTIZABLE
from edgekit.backends.ncnn.convert import check_loads, convert_with_pnnx, find_pnnx, import_ncnn, run_ncnn
from edgekit.backends.ncnn.focus import focus_to_conv
from edgekit.backends.ncnn.format import NcnnLayer, graph_io, int8_layers, read_param
from edgekit.backends.ncnn.int8 import Int8Result, build_int8
from edgekit.backends.ncnn.sensitivity import rank_layers
from edgekit.core.errors import BuildError, ConfigError
from edgekit.core.files import sha256_file
from edgekit.core.progress import track

#: Measured through ncnn_run.py on the reference TinyYolo (160 px), mAP@0.5:0.95 drop vs ORT fp32 with
#: the head in float: KL 0.00 / -0.35 points, ACIQ 0.40 / 0.55 (tests' checkpoint with 64 calibration
#: images / the deploy checkpoint with 256). Every conv in int8: KL 0.91 / -0.04, ACIQ 0.66 / 0.64.
DEFAULT_METHOD: Literal["kl", "aciq"] = "kl"
FILES = {"model": "model.ncnn.param", "weights": "model.ncnn.bin"}
TABLE = "model.table"
_STANDARD_DOMAINS = ("", "ai.onnx")
_HOST_THREADS = 2
#: Calibration images a layer's INT8 cost is measured on (``float_ranked``).
RANK_IMAGES = 8
_HINTS = {
    "NonMaxSuppression": "keep NMS and box selection out of the exported graph (edgekit decodes and runs "
    "NMS on the runner's output); pnnx leaves NMS as pnnx.Expression, which ncnn cannot load",
    "Tensor.slice": "strided slices have no ncnn layer (edgekit builds a Focus layer's four ::2 slices and "
    "their concat as one convolution, nothing else): replace the slice in the model, or pick another backend",
    "custom": "pnnx converts standard ONNX ops only: replace the custom op, or pick another backend",
}


class NcnnQuantizer(QuantizerOptions):
    """How edgekit's ncnn INT8 is calibrated (ncnn2table's methods), and what the build made.

    Attributes:
        method: ``kl`` (KL-divergence clip of activation histograms) or ``aciq`` (Gaussian clip from
            each blob's max and size, weights clipped the same way).
        images: Calibrate on the first ``images`` images of the set (manifest order is the sampling
            order); ``None`` = every image. KL needs at least 8.
        keep_float: ncnn layer names (from the ``.param``) to keep in float.
        float_head: Keep the prediction convs (those whose output reaches the model output through no
            other conv, see :func:`head_layers`) in float. Measured on the reference detector: KL
            drop 0.91 -> 0.00 mAP@0.5:0.95 points with 64 calibration images, -0.04 -> -0.35 with 256;
            its two 1x1 head convs cost +0.4 % size and about +5 % latency (x86, 1 thread).
        float_head_depth: With ``float_head``, also keep in float the convs that reach a prediction conv
            through at most this many other convs (0 = the prediction convs alone). ``edgekit build``
            raises it when no calibration method keeps the detections (a real YOLOv8n's classifier
            branch: see :attr:`NcnnBackend.fallback`).
        float_ranked: Also keep in float the this many layers that hurt the detections most when
            quantized alone, ranked on :data:`RANK_IMAGES` calibration images after calibrating
            (:mod:`edgekit.backends.ncnn.sensitivity`; about one build's time per 20 layers at 416 px).
            ``edgekit build`` tries 8, then 16, when the head alone in float is not enough (the real
            YOLOX: ACIQ with the top 8 in float keeps 13/13 detections at a score error of 0.046).
        quantized_layers: Layers that run in INT8 (written by the build).
        scales_sha256: sha256 of the calibration table (written by the build; differs when the
            methods really differ).
    """

    method: Literal["kl", "aciq"] = DEFAULT_METHOD
    images: int | None = Field(None, ge=1)
    keep_float: list[str] = []
    float_head: bool = True
    float_head_depth: int = Field(0, ge=0, le=8)
    float_ranked: int = Field(0, ge=0, le=64)
    quantized_layers: int | None = None
    scales_sha256: str | None = None


class NcnnBackend(Backend):
    """Build ``model.ncnn.param`` + ``model.ncnn.bin`` artifacts for the ncnn runtime.

    Example:
        >>> backend = NcnnBackend()
        >>> art = backend.build("det.onnx", {"precision": "int8", "quantizer": {"method": "kl"}},
        ...                     "out/ncnn", calib=cs, torch_program="det.pt")  # doctest: +SKIP
        >>> art.meta["ncnn"]["pnnx_source"], art.meta["runtime"]["use_int8_inference"]  # doctest: +SKIP
        ('torchscript', True)
    """

    name = "ncnn"
    precisions = ("fp32", "fp16", "int8")
    build_location = "host"
    int8_source = "calibration"
    quantizer_options = NcnnQuantizer
    torch_program = "torchscript"
    #: Quantizer settings ``edgekit build`` tries in turn when no calibration method keeps the detections.
    fallback = ({"float_head_depth": 1}, {"float_head_depth": 2}, {"float_ranked": 8}, {"float_ranked": 16})
    methods = (DEFAULT_METHOD, *(m for m in ("kl", "aciq") if m != DEFAULT_METHOD))
    min_calibration_images = min(MIN_IMAGES.values())
    extra = "ncnn"
    board_packages = ("ncnn",)
    runner = "ncnn_run.py"
    suffix = ".param"
    calibration_export = "edgekit.backends.ncnn.calib_export"

    @classmethod
    def arithmetic(cls, meta: dict[str, Any], features: list[str] | None) -> str:
        """fp16 where the artifact turns ncnn's fp16 arithmetic on and the core has it, else fp32.

        >>> NcnnBackend.arithmetic({"precision": "fp16", "runtime": {"use_fp16_arithmetic": True}}, ["asimd"])
        'fp32 (fp16 storage; this core has no fp16 arithmetic)'
        """
        flags = meta.get("runtime") or {}
        if fp16_arithmetic(flags, features):
            return cls._with_floats(meta, "fp16")
        if flags.get("use_fp16_arithmetic"):
            return cls._with_floats(meta, "fp32 (fp16 storage; this core has no fp16 arithmetic)")
        return cls._with_floats(meta, "fp32")

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        import copy

        rewritten, _ = focus_to_conv(copy.deepcopy(model))  # a Focus layer is built as a convolution
        return input_problems(model, options) + op_problems(rewritten)

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        pnnx_source = "torchscript" if source.torch_program else "onnx"
        shape = options.preprocess.input_shape()
        files = dict(FILES)
        with tempfile.TemporaryDirectory(prefix=".pnnx.", dir=work_dir) as tmp:
            program, focus = source.torch_program, []
            if program is None:
                program, focus = _without_focus(source.onnx, Path(tmp))
            converted = convert_with_pnnx(program, shape, tmp, fp16=options.precision == "fp16")
            param, bin_, int8 = converted.param, converted.bin, None
            if options.precision == "int8":
                int8 = self._quantize(converted.param, converted.bin, source.calib, options, Path(tmp))
                param, bin_ = int8.param, int8.bin
                os.replace(int8.table, work_dir / TABLE)
                files["table"] = TABLE
            os.replace(param, work_dir / FILES["model"])
            os.replace(bin_, work_dir / FILES["weights"])
        meta = self._meta(work_dir, options, pnnx_source, int8)
        if focus:
            meta["ncnn"]["focus_as_conv"] = focus
        return BuildOutput(files=files, meta=meta)

    def _quantize(self, param: Path, bin_: Path, calib: Any, options: BuildOptions, tmp: Path) -> Int8Result:
        quantizer = options.quantizer
        images = quantizer.images  # not more than the set holds: Backend._with_calibration checks
        keep = float_layers(quantizer, read_param(param))
        source = calibration_arrays(calib, options.preprocess, images)
        ranked = None
        if quantizer.float_ranked:
            ranked = _Ranked(param, bin_, source, options.head, quantizer.float_ranked)
        sha = getattr(calib, "sha256", None)
        images_key = (sha, options.preprocess.model_dump_json(), images) if sha else None
        result = build_int8(
            param, bin_, source, quantizer.method, tmp / "int8", threads=_HOST_THREADS, skip_layers=keep,
            more_float=ranked, images_key=images_key,
        )  # fmt: skip
        if ranked is not None:
            result.ranking = ranked.ranking
        return result

    def _meta(
        self, work_dir: Path, options: BuildOptions, pnnx_source: str, int8: Int8Result | None
    ) -> dict[str, Any]:
        layers = read_param(work_dir / FILES["model"])
        inputs, outputs = graph_io(layers)
        block: dict[str, Any] = {
            "input_blob": inputs[0],
            "output_blobs": sorted(outputs, key=_blob_order),
            "layers": len(layers),
            "pnnx_source": pnnx_source,
            "int8_layers": len(int8_layers(layers)),
        }
        meta: dict[str, Any] = {"ncnn": block, "runtime": runtime_flags(options.precision, options.threads)}
        if int8 is not None:
            block["int8"] = {
                "tool": "edgekit.backends.ncnn.int8 (ncnn2table + ncnn2int8)",
                "images": int8.images,
                "cosine_vs_fp32": round(int8.cosine, 6),
                "float_layers": [layer.name for layer in layers if _kept_float(layer)],
                "warnings": int8.warnings,
            }
            if int8.ranking:
                block["int8"]["sensitivity"] = {
                    "metric": "mean |score error| of FP32's active anchors, the layer alone in INT8",
                    "images": RANK_IMAGES,
                    "top": [{"layer": n, "cost": round(c, 5)} for n, c in int8.ranking[:32]],
                }
            table = sha256_file(work_dir / TABLE)
            results = {"quantized_layers": int8.quantized_layers, "scales_sha256": table}
            meta["quantization"] = options.quantizer.model_copy(update=results).model_dump(mode="json")
        return meta

    def _load_check(self, artifact: Artifact) -> None:
        param, bin_ = artifact.path("model"), artifact.path("weights")
        check_loads(param, bin_)
        layers = read_param(param)
        if int8_layers(layers) and not artifact.meta["runtime"].get("use_int8_inference"):
            raise BuildError(
                f"{param.name} has int8 layers but artifact.json's runtime block leaves use_int8_inference "
                "off, so ncnn would output NaN",
                "rebuild the artifact; never edit artifact.json by hand",
            )
        inputs, outputs = graph_io(layers)
        block = artifact.meta.get("ncnn", {})
        wanted = [block.get("input_blob"), *block.get("output_blobs", [None])]
        missing = [name for name in wanted if name not in (*inputs, *outputs)]
        if missing:
            raise BuildError(
                f"{param.name} lacks blob(s) {missing} that artifact.json names ({inputs} -> {outputs})",
                "rebuild the artifact; never edit files inside an artifact folder",
            )

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        param, bin_ = artifact.path("model"), artifact.path("weights")
        flags = artifact.meta["runtime"]
        outs = run_ncnn(
            param,
            bin_,
            np.asarray(x, dtype=np.float32),
            int8=bool(flags["use_int8_inference"]),
            fp16=bool(flags["use_fp16_arithmetic"]),
            threads=1,
        )
        by_name = dict(zip(graph_io(read_param(param))[1], outs, strict=True))
        return [by_name[name] for name in artifact.meta["ncnn"]["output_blobs"]]

    def _tools(self) -> dict[str, str]:
        import_ncnn()
        find_pnnx()
        return {name: importlib.metadata.version(name) for name in ("ncnn", "pnnx")}


def float_layers(quantizer: NcnnQuantizer, layers: list[NcnnLayer]) -> list[str]:
    """The layers an INT8 build keeps in float: ``keep_float`` plus, with ``float_head``, the head.

    Raises:
        ConfigError: ``keep_float`` names a layer that is not a quantizable layer of the model.
        BuildError: Nothing would be left to quantize.
    """
    quantizable = [layer.name for layer in layers if layer.type in QUANTIZABLE]
    unknown = sorted(set(quantizer.keep_float) - set(quantizable))
    if unknown:
        raise ConfigError(
            f"quantizer keep_float names no quantizable layer of the model: {', '.join(unknown)}",
            f"use ncnn layer names from the .param: {', '.join(quantizable[:12])}",
        )
    head = head_layers(layers, quantizer.float_head_depth) if quantizer.float_head else ()
    keep = set(quantizer.keep_float) | set(head)
    if not set(quantizable) - keep:
        raise BuildError(
            f"every quantizable layer is kept in float ({', '.join(sorted(keep))})",
            "set the quantizer's float_head: false (or shorten keep_float), or build fp16",
        )
    return sorted(keep)


def fp16_arithmetic(flags: dict[str, Any], features: list[str] | None) -> bool:
    """True when ncnn computes in fp16: the artifact allows it and the core has fp16 arithmetic (asimdhp)."""
    return bool(flags.get("use_fp16_arithmetic")) and "asimdhp" in (features or [])


def runtime_flags(precision: str, threads: int | None) -> dict[str, Any]:
    """The ``runtime`` block of the sidecar: every ``ncnn.Option`` the runner must set explicitly.

    ncnn's defaults turn fp16 storage and arithmetic on (used wherever the CPU has them) and must not
    apply to an fp32 artifact; an int8 model needs ``use_int8_inference``.
    """
    fp16 = precision == "fp16"
    return {
        "threads": threads,
        "use_vulkan_compute": False,
        "use_int8_inference": precision == "int8",
        "use_fp16_storage": fp16,
        "use_fp16_packed": fp16,
        "use_fp16_arithmetic": fp16,
        "use_bf16_storage": False,
    }


def calibration_arrays(calib: Any, spec: Any, limit: int | None) -> Callable[[], Iterable[np.ndarray]]:
    """A re-iterable source of the set's images in the model's preprocessing (KL reads it twice)."""
    return lambda: calib.arrays(limit=limit, spec=spec)


class _Ranked:
    """``more_float`` for :func:`build_int8`: the ``count`` layers whose INT8 alone costs most.

    Rankings are kept for the process, keyed by the model's and table's content, so the build search's
    8 and 16 fallbacks rank a method once.
    """

    _cache: ClassVar[dict[tuple[str, ...], list[tuple[str, float]]]] = {}

    def __init__(self, param: Path, bin_: Path, source: Callable, head: str | None, count: int) -> None:
        self.param, self.bin, self.source, self.head, self.count = param, bin_, source, head, count
        self.ranking: list[tuple[str, float]] = []

    def __call__(self, table: Any) -> list[str]:
        from edgekit.quantize.sensitivity import detection_metric

        if self.head is None:
            raise ConfigError(
                "float_ranked ranks layers by their effect on the detections; the output layout is unknown",
                "give --head (yolov5, yolov8 or yolox)",
            )
        scales = sorted((name, s.tobytes()) for name, s in table.activation_scales.items())
        digest = hashlib.sha256(repr(scales).encode())
        key = (sha256_file(self.param), sha256_file(self.bin), digest.hexdigest(), self.head)
        if key not in self._cache:
            images = [x for _, x in zip(range(RANK_IMAGES), self.source(), strict=False)]
            with track(len(table.activation_scales), "ncnn: ranking layers by their INT8 cost") as advance:
                self._cache[key] = rank_layers(
                    self.param, self.bin, table, images, detection_metric(self.head), lambda d, t: advance()
                )
        self.ranking = self._cache[key]
        return [name for name, _ in self.ranking[: self.count]]


def _kept_float(layer: NcnnLayer) -> bool:
    return layer.type in QUANTIZABLE and not layer.get_int(8)


def head_layers(layers: list[NcnnLayer], depth: int = 0) -> list[str]:
    """Quantizable layers whose output reaches a model output through at most ``depth`` other ones.

    At ``depth`` 0 these are a detector's prediction convs: their outputs go through sigmoid and the box
    decode (``(2 s)^2 * anchor`` amplifies an error in ``s``), so they are the layers INT8 hurts most;
    each step of ``depth`` adds the convs feeding those (a YOLOv8 head's branch convs).
    """
    producers = {top: layer for layer in layers for top in layer.tops}
    found: set[str] = set()
    frontier = list(graph_io(layers)[1])
    for _ in range(depth + 1):
        level, seen, stack = set(), set(), frontier
        while stack:
            layer = producers.get(stack.pop())
            if layer is None or layer.name in seen:
                continue
            seen.add(layer.name)
            if layer.type in QUANTIZABLE and layer.name not in found:
                level.add(layer.name)
            else:
                stack.extend(layer.bottoms)
        found |= level
        frontier = [b for layer in layers if layer.name in level for b in layer.bottoms]
    return [layer.name for layer in layers if layer.name in found]


def _blob_order(name: str) -> tuple[int, str]:
    """``out0 < out1 < out10``: pnnx numbers outputs in the model's output order."""
    digits = name[len(name.rstrip("0123456789")) :]
    return (int(digits) if digits else -1, name)


# -- what can be known before converting -----------------------------------------------------------
def input_problems(model: Any, options: BuildOptions) -> list[Problem]:
    """Problems with the input: ncnn takes one NCHW image without a batch dimension (batch 1)."""
    shape = dims(graph_inputs(model)[0])
    problems = []
    if options.preprocess is None:
        message = f"cannot tell pnnx the input shape: the model's input is {shape}, not a square image"
        problems.append(Problem("error", message, "pass BuildOptions(preprocess=PreprocessSpec(...))"))
    elif options.preprocess.layout != "NCHW":
        problems.append(
            Problem("error", f"ncnn takes NCHW input, the model's input is NHWC {shape}", "export NCHW")
        )
    if isinstance(shape[0], int) and shape[0] != 1:
        problems.append(
            Problem("error", f"ncnn runs batch 1, the model's input is {shape}", "export with batch 1")
        )
    return problems


def op_problems(model: Any) -> list[Problem]:
    """Ops pnnx cannot turn into ncnn layers (it often exits 0 anyway), and pnnx's known traps."""
    problems = [_custom_op_problem(node) for node in model.graph.node if node.domain not in _STANDARD_DOMAINS]
    nms = [node.name or node.op_type for node in model.graph.node if node.op_type == "NonMaxSuppression"]
    if nms:
        message = f"NonMaxSuppression node(s) {_names(nms)} have no ncnn layer"
        problems.append(_error(message, "NonMaxSuppression"))
    strided = strided_slices(model)
    if strided:
        message = (
            f"Slice node(s) {_names(strided)} take steps other than 1; pnnx leaves a strided slice as "
            "Tensor.slice, which ncnn has no layer for"
        )
        problems.append(_error(message, "Tensor.slice"))
    if any(node.op_type == "ReduceSum" for node in model.graph.node):
        problems.append(
            Problem(
                "warning",
                "pnnx's ONNX path was measured to drop a ReduceSum's axes (DFL heads) silently",
                "build from a TorchScript trace (build(..., torch_program=...)); the FP32 parity check "
                "fails a wrong conversion either way",
            )
        )
    return problems


def _custom_op_problem(node: Any) -> Problem:
    where = f"{node.domain}:{node.op_type} (node '{node.name}')"
    message = f"pnnx cannot convert the custom-domain op {where}"
    return Problem("error", message, _HINTS["custom"], (node.op_type,))


def _error(message: str, op: str) -> Problem:
    return Problem("error", message, _HINTS[op], (op,))


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _without_focus(onnx_path: Path, tmp: Path) -> tuple[Path, list[str]]:
    """The ONNX pnnx converts: ``onnx_path``, or a copy with its Focus layers as convolutions."""
    import onnx

    model, replaced = focus_to_conv(onnx.load(str(onnx_path)))
    if not replaced:
        return onnx_path, []
    out = tmp / "model_focus_conv.onnx"
    onnx.save(model, str(out))
    return out, replaced


def strided_slices(model: Any) -> list[str]:
    """Names of Slice nodes whose (constant) ``steps`` input has a value other than 1."""
    slices = [n for n in model.graph.node if n.op_type == "Slice" and len(n.input) >= 5 and n.input[4]]
    steps = _constants(model, {node.input[4] for node in slices})
    return [
        node.name or node.output[0]
        for node in slices
        if node.input[4] in steps and np.any(steps[node.input[4]] != 1)
    ]


def _constants(model: Any, names: set[str]) -> dict[str, np.ndarray]:
    """The initializers and Constant-node outputs among ``names``, as arrays."""
    from onnx import numpy_helper

    tensors = {init.name: init for init in model.graph.initializer if init.name in names}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                tensors[node.output[0]] = value
    return {name: numpy_helper.to_array(t).ravel() for name, t in tensors.items()}
