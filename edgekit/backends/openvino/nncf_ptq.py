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
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BuildError, MissingExtraError

#: Activation range estimators edgekit offers (``OvQuantizer.method``), best guess first.
METHODS = ("minmax", "mean_minmax")


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

    Raises:
        BuildError: NNCF failed.
    """
    import openvino as ov

    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(str(fp32_onnx))
    input_name = model.inputs[0].get_any_name()
    data = list(images())
    dataset = nncf.Dataset(data, lambda x: {input_name: np.ascontiguousarray(x, dtype=np.float32)})
    ranges = {
        "minmax": RangeEstimatorParametersSet.MINMAX,
        "mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX,
    }
    patterns = [re.escape(name) + "(/WithoutBiases)?$" for name in ignored]
    try:
        with _quiet():
            return nncf.quantize(
                model,
                dataset,
                preset=nncf.QuantizationPreset.MIXED,
                target_device=nncf.TargetDevice.CPU,
                subset_size=max(1, min(subset_size, len(data))),
                fast_bias_correction=fast_bias_correction,
                ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
                advanced_parameters=AdvancedQuantizationParameters(
                    activations_range_estimator_params=ranges[method]
                ),
            )
    except Exception as exc:  # NNCF raises many types from its graph passes
        raise BuildError(
            f"NNCF {nncf.__version__} could not quantize the model: {type(exc).__name__}: {str(exc)[-400:]}",
            "build fp32/fp16 (--precision), or report the model's op to NNCF",
        ) from exc


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
