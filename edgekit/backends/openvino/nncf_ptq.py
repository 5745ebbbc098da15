"""INT8 by NNCF's post-training quantization, on the ONNX graph, with the detector's head kept float.

OpenVINO reads the FP32 ONNX; NNCF inserts FakeQuantize nodes into that model (its OpenVINO backend),
which the CPU plugin runs as INT8 kernels; :func:`runtime_precisions` counts them in the compiled model.
(NNCF's ONNX backend, whose QDQ file OpenVINO then reads, was tried and dropped: OpenVINO ran that file
at an active-score cosine of 0.64 against FP32 on the real YOLOv8n, where ONNX Runtime ran it at 0.97.)

OpenVINO's model converter (``ovc`` / ``openvino.convert_model``) and NNCF send usage telemetry by
default; edgekit reads ONNX with ``Core.read_model`` (no telemetry) and sets ``NNCF_CI`` before NNCF is
imported, which turns NNCF's off. No traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BuildError, MissingExtraError

#: Activation range estimators edgekit offers (``OvQuantizer.method``), best guess first.
METHODS = ("mean_minmax", "minmax")


def import_nncf() -> Any:
    """Import NNCF with its telemetry off and its INFO lines (printed on stdout) silenced."""
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry switch; edgekit sends nothing anywhere
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import nncf
    except ImportError as exc:
        raise MissingExtraError(
            f"backend 'openvino' needs NNCF for INT8 ({exc})", "pip install 'edgekit[openvino]'"
        ) from exc
    nncf.set_log_level(logging.WARNING)
    return nncf


def quantize(
    fp32_onnx: Path,
    images: Callable[[], Iterable[np.ndarray]],
    *,
    method: str,
    subset_size: int,
    fast_bias_correction: bool,
    ignored: list[str],
    control: AccuracyControl | None = None,
) -> Any:
    """NNCF's INT8 ``openvino.Model`` of ``fp32_onnx`` (read by OpenVINO's ONNX frontend).

    Args:
        fp32_onnx: The FP32 model (static shape, every node named).
        images: A re-iterable source of preprocessed ``(1, C, H, W)`` float32 images.
        method: One of :data:`METHODS`.
        subset_size: Images NNCF calibrates on.
        fast_bias_correction: NNCF's fast bias correction (else the full one: slower, same idea).
        ignored: ONNX node names to keep in float. OpenVINO names a conv with a bias ``X`` as
            ``X/WithoutBiases`` (the conv) plus ``X`` (its Add); both forms are matched. Names OpenVINO
            folded away (shape arithmetic of a decode) match nothing and are skipped.
        control: Run NNCF's accuracy-controlled quantization with edgekit's detection metric
            (:class:`AccuracyControl`): layers whose INT8 costs the most are put back to float until
            the metric drops by at most ``control.max_drop``.

    Raises:
        BuildError: NNCF failed.
    """
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = read_onnx(fp32_onnx)
    input_name = model.inputs[0].get_any_name()
    data = [np.ascontiguousarray(x, dtype=np.float32) for x in images()]
    dataset = nncf.Dataset(list(range(len(data))), lambda i: {input_name: data[i]})
    ranges = {
        "minmax": RangeEstimatorParametersSet.MINMAX,
        "mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX,
    }
    patterns = [re.escape(name) + "(/WithoutBiases)?$" for name in ignored]
    common = {
        "preset": nncf.QuantizationPreset.MIXED,
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": max(1, min(subset_size, len(data))),
        "fast_bias_correction": fast_bias_correction,
        "ignored_scope": nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
    }
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=ranges[method])
    try:
        with _quiet():
            if control is None:
                return nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            check = list(range(min(control.images, len(data))))
            refs = fp32_outputs(model, [data[i] for i in check])
            validate = control.validation(refs, data)
            return nncf.quantize_with_accuracy_control(
                model, dataset, nncf.Dataset(check), validate, max_drop=control.max_drop,
                drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    num_ranking_workers=1, max_num_iterations=control.max_float
                ),
                **common,
            )  # fmt: skip
    except Exception as exc:  # NNCF raises many types from its graph passes
        raise BuildError(
            f"NNCF {nncf.__version__} could not quantize the model: {type(exc).__name__}: {str(exc)[-400:]}",
            "build fp32/fp16 (--precision), or report the model's op to NNCF",
        ) from exc


@dataclass
class AccuracyControl:
    """NNCF's accuracy-controlled quantization, judged by edgekit's detection metric.

    Attributes:
        head: The output layout (``yolov5``, ``yolov8``, ``yolox``).
        max_drop: Largest drop of the metric allowed (absolute; the metric is the share of FP32's
            detections kept minus their mean score error over the check images, 1.0 for FP32 itself).
        images: Calibration images the metric is measured on.
        max_float: Most rounds of putting layers back to float.
    """

    head: str
    max_drop: float = 0.03
    images: int = 16
    max_float: int = 16

    def validation(self, refs: list[np.ndarray], data: list[np.ndarray]) -> Callable:
        """NNCF's ``validation_fn``: FP32's detections kept minus their mean score error.

        The metric is pooled over the images (as the build's check pools them: a detector may find
        nothing in most of them); each image's own value, used by NNCF to rank, is the same figure on that
        image alone, or ``1 - mean |score error|`` of its active anchors where FP32 detects nothing.
        """
        from edgekit.backends.contract.agreement import agreement
        from edgekit.quantize.sensitivity import detection_metric

        anchors = detection_metric(self.head)

        def value(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
            figures = agreement(ref, got, self.head)
            if figures["kept"] is None:
                return 1.0 - anchors(ref, got)
            return float(figures["kept"]) - float(figures["score_error"] or 0.0)

        def validate(compiled: Any, items: Iterable[int]) -> tuple[float, list[float]]:
            items = list(items)
            gots = [np.asarray(compiled({0: data[i]})[0]) for i in items]
            ref = [refs[i] for i in items]
            return value(ref, gots), [value([r], [g]) for r, g in zip(ref, gots, strict=True)]

        return validate


def fp32_outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The FP32 model's first output per input, computed in f32."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [np.array(compiled({0: x})[0], copy=True) for x in xs]


def read_onnx(path: Path) -> Any:
    """The ONNX as an ``openvino.Model``, folded as OpenVINO's converter folds it, without its telemetry.

    ``Core.read_model`` leaves each conv bias behind a shape-computed Reshape, where NNCF's bias
    correction cannot see it (0 of 63 biases corrected on a YOLOv8n); the converter
    (``openvino.convert_model``) folds those, but reports usage over the network. The same common
    transformations are applied here directly.
    """
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations

    model = ov.Core().read_model(str(path))
    apply_moc_transformations(model, cf=True)
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws progress bars on stdout; the CLI's stdout carries results only."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def runtime_precisions(compiled: Any) -> dict[str, list[str]]:
    """Layer names of the compiled model by the precision their convolutions really run in."""
    found: dict[str, list[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) != "Convolution":
            continue
        precision = info["runtimePrecision"].astype(str)
        found.setdefault(precision, []).append(op.get_friendly_name())
    return found
