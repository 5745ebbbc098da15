"""MNN (Alibaba) on Arm CPUs: ``mnnconvert`` makes the model, MNN's offline quantizer makes INT8.

* **fp32** is ``mnnconvert -f ONNX``.
* **fp16** is the same with ``--fp16``: fp16 weight *storage* (about half the file); MNN computes in
  fp32 unless the runner asks for ``precision: low`` on an ARMv8.2 CPU, which this host cannot check,
  so the sidecar asks for ``high``.
* **int8** converts fp32, then runs MNN's post-training quantizer (``kl`` or ``ema`` activation
  scales, ``MAX_ABS`` weights) on the calibration set. MNN's quantizer *stretches* every image to the
  input size, so edgekit writes the set's letterboxed canvases (the model's own letterbox) as PNGs of
  exactly that size and gives MNN the model's mean and std on 0..255 pixels: MNN then sees what
  evaluation sees, up to 8-bit rounding. Feature ADMM is refused (it segfaults in 3.6.1 and writes an
  all-zero model). EMA runs with ``winogradOpt: false``: MNN's default INT8 Winograd for 3x3 convs cost a
  real YOLOv8n most of its score accuracy on MNN's ARM kernels (mean score error 0.086 → 0.036 against
  FP32's detections on the emulated Cortex-A76; MNN 3.6.1 reads ``weight_quantize_method`` and the
  clamp values only on its KL path, so they change nothing under EMA).

Every tool runs in a subprocess through :mod:`edgekit.backends.mnn.tools` (no pip, no telemetry, a
segfault cannot kill edgekit); a built INT8 model is checked by structure (how many convolutions are
INT8, :mod:`edgekit.backends.mnn.graph`) and by numbers (not all zero, then the FP32 parity check).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from edgekit.backends.contract.base import (
    Artifact,
    Backend,
    BuildOptions,
    BuildOutput,
    BuildSource,
    Problem,
    QuantizerOptions,
)
from edgekit.backends.contract.board_check import where
from edgekit.backends.mnn import tools as mt
from edgekit.backends.mnn.floats import head_convs, plan, type_float
from edgekit.backends.mnn.graph import describe, load_graph
from edgekit.calib.exporters import tool_mean_norm
from edgekit.core.errors import BuildError, CalibrationError, ConfigError
from edgekit.data.preprocess import PreprocessSpec

#: Measured on the reference detector (160 px, hard shapes, 64-image calib split, 200 val images, mAP
#: from the runner's outputs; ``bench/mnn_methods.py``): ORT fp32 0.5018, MNN int8 EMA 0.4947, KL 0.0000
#: (MNN 3.6.1's KL zeroes every score of that model). KL stays as the fallback ``--calibrator auto`` tries.
DEFAULT_METHOD: Literal["kl", "ema"] = "ema"
EMA_BATCH = 8
MODEL_FILE = "model.mnn"
#: The runtime precision the sidecar asks for: ``high`` = fp32 arithmetic, what the host check verified.
RUNTIME_PRECISION = "high"
_HOST_THREADS = 1
#: Lowest cosine of the box part and of the score part of an INT8 output against the FP32 ``.mnn``
#: (on the first calibration images). Measured on the reference detector: EMA >= 0.9987 (scores),
#: KL 0.09-0.24 (every objectness zero) while its whole-output cosine was still 0.974.
_ADMM = {
    "method": "MNN's ADMM feature quantizer is refused: in MNN 3.6.1 it segfaults after 'Quantize model "
    "done!' and the model it writes outputs all zeros",
    "weight_method": "MNN's ADMM weight quantizer is not offered: measured no gain over MAX_ABS "
    "(cosine 0.99256 vs 0.99238) at 3x the quantization time",
}
_CUSTOM_HINT = "MNN converts standard ONNX ops only: replace the custom op, or pick another backend"
_OP_HINT = (
    "replace the op in the model or export with another opset (`mnnconvert -f ONNX --OP` lists MNN's ops)"
)


class MnnQuantizer(QuantizerOptions):
    """How MNN's offline quantizer makes an INT8 model, and what it was fed.

    Attributes:
        method: Activation scales: ``ema`` (moving average of each tensor's range over batches) or
            ``kl`` (KL-divergence clip of activation histograms). ``admm`` is refused.
        weight_method: ``max_abs`` (per-channel symmetric int8 weights); ADMM is not offered.
        batch_size: Images per EMA batch (MNN drops an incomplete last batch, so the image count
            must be a multiple of it).
        images: Calibrate on the first ``images`` images of the set (manifest order is the sampling
            order); ``None`` = every image, rounded down to a multiple of ``batch_size`` for EMA. An
            artifact records the number actually used.
        float_head: Keep the detector's prediction convolutions in float (their outputs become boxes
            and class scores; :func:`edgekit.backends.mnn.floats.head_convs`).
        float_head_depth: With ``float_head``, also keep in float the convolutions that reach a
            prediction conv through at most this many others. ``edgekit build`` raises it when no
            method keeps the detections (:attr:`MnnBackend.fallback`).
        keep_float: More convolutions (MNN op names) to keep in float.
        float_layers: The convolutions that run in float (written by the build): the kept ones, and a
            convolution whose output feeds one of them directly (its output tensor is typed float too).
    """

    method: Literal["kl", "ema"] = DEFAULT_METHOD
    weight_method: Literal["max_abs"] = "max_abs"
    batch_size: int = Field(EMA_BATCH, ge=1, le=256)
    images: int | None = Field(None, ge=1)
    float_head: bool = True
    float_head_depth: int = Field(0, ge=0, le=8)
    keep_float: list[str] = []
    float_layers: list[str] | None = None

    @field_validator("method", "weight_method", mode="before")
    @classmethod
    def _refuse_admm(cls, value: Any, info: Any) -> Any:
        """Accept MNN's upper-case spellings; refuse ADMM with the reason, not just "not allowed"."""
        value = value.lower() if isinstance(value, str) else value
        if value == "admm":
            raise ValueError(f"{_ADMM[info.field_name]}; use method 'ema' or 'kl', weight_method 'max_abs'")
        return value


class MnnBackend(Backend):
    """Build ``model.mnn`` artifacts for MNN's CPU runtime (fp32, fp16 weights, INT8 from a set).

    Example:
        >>> backend = MnnBackend()
        >>> art = backend.build("det.onnx", {"precision": "int8", "quantizer": {"method": "ema"}},
        ...                     "out/mnn", calib=cs)  # doctest: +SKIP
        >>> art.meta["mnn"]["graph"]["int8_layers"], art.meta["quantization"]["images"]  # doctest: +SKIP
        (11, 64)
    """

    name = "mnn"
    precisions = ("fp32", "fp16", "int8")
    build_location = "host"
    int8_source = "calibration"
    quantizer_options = MnnQuantizer
    methods = (DEFAULT_METHOD, *(m for m in ("ema", "kl") if m != DEFAULT_METHOD))
    min_calibration_images = EMA_BATCH
    #: Quantizer settings ``edgekit build`` tries in turn when no calibration method keeps the detections.
    fallback = ({"float_head_depth": 1}, {"float_head_depth": 2})
    extra = "mnn"
    board_packages = ("MNN",)
    checks_on_board = True
    runner = "mnn_run.py"
    suffix = ".mnn"
    calibration_export = "edgekit.backends.mnn.calib_export"

    @classmethod
    def arithmetic(cls, meta: dict[str, Any], features: list[str] | None) -> str:
        """MNN's ``precision: low`` computes in fp16 on a core with fp16 arithmetic; anything else in fp32.

        >>> MnnBackend.arithmetic({"precision": "fp16", "runtime": {"precision": "high"}}, ["asimdhp"])
        'fp32'
        """
        precision = (meta.get("runtime") or {}).get("precision") or RUNTIME_PRECISION
        fp16 = precision == "low" and "asimdhp" in (features or [])
        return cls._with_floats(meta, "fp16" if fp16 else "fp32")

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        problems = layout_problems(options) + op_problems(model)
        if mt.mnn_version() != mt.TESTED_MNN_VERSION:
            problems.append(
                Problem(
                    "warning",
                    f"MNN {mt.mnn_version()} is installed; edgekit was tested with {mt.TESTED_MNN_VERSION}",
                    mt.INSTALL_HINT,
                )
            )
        return problems

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        if options.precision != "int8":
            log = mt.convert(source.onnx, work_dir / MODEL_FILE, fp16=options.precision == "fp16")
            mnn = {"weights": options.precision, "convert_s": round(log.seconds, 3)}
            return BuildOutput({"model": MODEL_FILE}, self._meta(options, mnn))
        with tempfile.TemporaryDirectory(prefix="edgekit-mnn-int8-") as tmp:
            fp32 = mt.convert(source.onnx, Path(tmp) / "fp32.mnn", fp16=False).artifact
            quantizer, mnn = quantize_from_set(fp32, source.calib, options, Path(tmp))
            os.replace(Path(tmp) / MODEL_FILE, work_dir / MODEL_FILE)
        return BuildOutput({"model": MODEL_FILE}, self._meta(options, mnn, quantizer))

    def _meta(self, options: BuildOptions, mnn: dict, quantizer: MnnQuantizer | None = None) -> dict:
        runtime = {"threads": options.threads, "precision": RUNTIME_PRECISION, "backend": "CPU"}
        meta: dict[str, Any] = {"mnn": mnn, "runtime": runtime}
        if quantizer is not None:
            meta["quantization"] = quantizer.model_dump(mode="json")
        return meta

    def _load_check(self, artifact: Artifact) -> None:
        shape = mt.model_input_shape(artifact.path())
        expected = artifact.meta["input"]["shape"]
        if all(isinstance(d, int) for d in expected) and shape != expected:
            raise BuildError(
                f"MNN reads {artifact.path().name}'s input as {shape}, artifact.json says {expected}",
                "export the ONNX with a static input shape",
            )

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        precision = (artifact.meta.get("runtime") or {}).get("precision") or RUNTIME_PRECISION
        return mt.run_mnn(artifact.path(), x, threads=_HOST_THREADS, precision=precision)

    def infer_checks(self, artifact: Artifact, xs: list[Any]) -> list[list[Any]]:
        """On the check board when one is set (its MNN kernels), else on this host."""
        from edgekit.backends.contract.board_check import current
        from edgekit.backends.mnn.board import run_on_check_board

        if current() is None:
            return super().infer_checks(artifact, xs)
        precision = (artifact.meta.get("runtime") or {}).get("precision") or RUNTIME_PRECISION
        return [runs[0] for runs in run_on_check_board(artifact.path(), xs, precision=precision)]

    def _tools(self) -> dict[str, str]:
        return {"mnn": mt.mnn_version()}


# --- checks -----------------------------------------------------------------------------------------------


def layout_problems(options: BuildOptions) -> list[Problem]:
    """MNN's Python runtime and quantizer feed NCHW tensors; edgekit's detectors are NCHW."""
    if options.preprocess is not None and options.preprocess.layout != "NCHW":
        return [
            Problem(
                "error",
                f"backend 'mnn' takes NCHW image inputs; this model's input is {options.preprocess.layout}",
                "export the ONNX with an NCHW input (the MNN converter keeps the ONNX layout)",
            )
        ]
    return []


def op_problems(model: Any) -> list[Problem]:
    """One error per op type MNN's converter lacks (custom-domain ops always), naming the nodes."""
    nodes: dict[str, list[str]] = {}
    for label, node in mt.unsupported_ops(model):
        nodes.setdefault(label, []).append(node or "?")
    problems = []
    for label, names in nodes.items():
        custom = ":" in label
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        message = f"MNN {mt.mnn_version()} cannot convert op {label} (node(s) {shown})"
        problems.append(
            Problem("error", message, _CUSTOM_HINT if custom else _OP_HINT, (label.split(":")[-1],))
        )
    return problems


# --- int8 -------------------------------------------------------------------------------------------------


def calibration_count(quantizer: MnnQuantizer, calib: Any) -> int:
    """How many images of the set to calibrate on (see :attr:`MnnQuantizer.images`).

    Raises:
        CalibrationError: More images asked than the set has, or fewer than one EMA batch available.
        ConfigError: An explicit EMA image count that is not a multiple of ``batch_size``.
    """
    if quantizer.images is not None and quantizer.images > calib.count:
        raise CalibrationError(
            f"quantizer images={quantizer.images} but calibration set {calib.name!r} has {calib.count}",
            "lower images, or import a larger set with `edgekit calib import`",
        )
    count, batch = quantizer.images or calib.count, quantizer.batch_size
    if quantizer.method != "ema":
        return count
    if quantizer.images is None:
        count -= count % batch
    if count == 0:
        raise CalibrationError(
            f"calibration set {calib.name!r} has {calib.count} images, fewer than one EMA batch ({batch})",
            "lower batch_size, use method 'kl', or import a larger set",
        )
    if count % batch:
        raise ConfigError(
            f"quantizer images={count} is not a multiple of batch_size={batch}",
            "MNN's EMA drops an incomplete last batch: give a multiple, or leave images unset",
        )
    return count


def canvas_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The model's letterbox without normalisation: RGB NCHW values in [0, 1] (8-bit canvases)."""
    return spec.model_copy(
        update={"mean": (0.0,) * 3, "std": (1.0,) * 3, "channel_order": "RGB", "layout": "NCHW"}
    )


#: MNN computes ``(pixel - mean) * normal`` on 0..255 pixels, in the model's channel order (its ``format``).
tool_mean_normal = tool_mean_norm


def quantize_from_set(
    fp32: Path, calib: Any, options: BuildOptions, tmp: Path
) -> tuple[MnnQuantizer, dict[str, Any]]:
    """Write the set's canvases, run MNN's quantizer into ``tmp/model.mnn`` and check the result.

    Returns:
        The quantizer options with ``images`` resolved, and the ``mnn`` block of ``artifact.json``.

    Raises:
        CalibrationError: The set is too small for the request.
        BuildError: The quantizer failed, quantized no layer, or wrote a model that outputs zeros/NaN.
    """
    quantizer, spec = options.quantizer, options.preprocess
    count = calibration_count(quantizer, calib)
    images = mt.write_letterboxed_images(calib.arrays(limit=count, spec=canvas_spec(spec)), tmp / "images")
    try:
        log = _run_quantizer(fp32, tmp, spec, quantizer, count)
    except BuildError as exc:
        if quantizer.method != "ema" or quantizer.batch_size == 1 or "Reshape error" not in exc.message:
            raise
        # EMA feeds whole batches; a graph with a fixed batch-1 Reshape (e.g. a DFL head) crashes MNN's
        # quantizer ("Reshape error: 35200 -> 4400", SIGSEGV). One image per batch always fits it.
        quantizer = quantizer.model_copy(update={"batch_size": 1})
        log = _run_quantizer(fp32, tmp, spec, quantizer, count)
    floats = _type_float(log.artifact, quantizer)
    graph = _checked_int8(log.artifact, fp32, calib, options)
    mnn = {
        "float_head": floats["convs"],
        "float_tensors": floats["tensors"],
        "quantizer_config": log.config,
        "quantize_s": round(log.seconds, 3),
        "calibration_images": len(images),
        "sidecar_scales": None if log.scales is None else asdict(log.scales),
        "graph": graph,
    }
    floats_run = list(graph["float_layers"])
    return quantizer.model_copy(update={"images": count, "float_layers": floats_run}), mnn


def _twice(model: Path, x: Any) -> tuple[list, list]:
    """Two runs of ``x`` through ``model``, on the check board when one is set."""
    from edgekit.backends.contract.board_check import current
    from edgekit.backends.mnn.board import run_on_check_board

    if current() is not None:
        runs = run_on_check_board(model, [x], repeat=2)[0]
        return runs[0], runs[1]
    return mt.run_mnn(model, x), mt.run_mnn(model, x)


def _type_float(model: Path, quantizer: MnnQuantizer) -> dict[str, Any]:
    """Keep the prediction convolutions (and ``keep_float``) in float by typing their tensors, in place."""
    graph = load_graph(model)
    head = head_convs(graph, quantizer.float_head_depth) if quantizer.float_head else []
    convs = list(dict.fromkeys([*head, *quantizer.keep_float]))
    chosen = plan(graph, convs)
    tmp = model.with_name(model.name + ".float")
    changed = type_float(model, tmp, chosen.indexes())
    os.replace(tmp, model)
    return {"convs": convs, "tensors": changed}


def _run_quantizer(fp32: Path, tmp: Path, spec: PreprocessSpec, quantizer: MnnQuantizer, count: int):
    mean, normal = tool_mean_normal(spec)
    return mt.quantize(
        fp32, tmp / MODEL_FILE, tmp / "images", width=spec.input_size, height=spec.input_size,
        mean=mean, normal=normal, fmt=spec.channel_order, feature_method=quantizer.method.upper(),
        weight_method=quantizer.weight_method.upper(), used_image_num=count, batch_size=quantizer.batch_size,
    )  # fmt: skip


def _checked_int8(model: Path, fp32: Path, calib: Any, options: BuildOptions) -> dict[str, Any]:
    """Structure (some layer is INT8) and numbers: outputs neither all zero nor NaN, and the same twice.

    MNN 3.6.1's INT8 kernels on x86 were measured to give different outputs from run to run on a real
    YOLOv8n (C2f blocks: split and concat between INT8 convolutions; max difference 28 to 60 in box
    coordinates, on AVX-512 and under qemu on AVX2 alone): such a model cannot be judged or deployed.
    """
    method = options.quantizer.method
    summary = describe(model)
    if summary.int8_layers == 0:
        raise BuildError(
            f"MNN's quantizer (method {method}) wrote {model.name} with no INT8 layer "
            f"({summary.conv_layers} convolutions stay float)",
            "the model may have no layer MNN quantizes; build fp16 instead",
        )
    x = next(iter(calib.arrays(limit=1, spec=options.preprocess)))
    first, again = _twice(model, x)
    mt.check_outputs_sane(first, producer=f"MNN's quantizer (method {method})")
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(first, again, strict=True))
    if moved > 0.0:
        raise BuildError(
            f"MNN's INT8 model (method {method}) gives different outputs on two runs of the same image "
            f"on {where()} (max difference {moved:.4g}): this MNN build computes some INT8 layer from memory "
            "it did not write",
            "try another calibration method (--calibrator), build fp16, or check it on an ARM board with "
            "--check-on (MNN's x86 INT8 kernels do this on C2f detectors)",
        )
    # Boxes and scores are then compared with FP32 on their own by the build's parity check.
    return summary.to_dict()
