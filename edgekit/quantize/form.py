"""The QDQ form a runtime needs on a given device: which weight range, and why.

ONNX Runtime's x86 INT8 kernels multiply u8 activations by s8 weights. Without VNNI they use
``vpmaddubsw`` (AVX2 / AVX-512BW), which adds pairs of u8*s8 products into *int16* with saturation:
with full-range (8-bit) weights two products can exceed 32767 and the sum clips. ORT's quantization
documentation names the cure, ``reduce_range`` (7-bit weights, ``[-64, 63]``), and says VNNI
(``vpdpbusd``, int32 accumulation) and Arm have no such issue. So the form follows the device's
CPU, which the runner reports (:func:`edgekit.runners.runcore.cpu_features`) and a target YAML can
state for a board that is not at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from edgekit.runners.runcore import cpu_features, int8_dot

#: ``int8_dot`` values whose u8*s8 products accumulate in int32 (no saturation at full range).
NO_SATURATION = {"vnni": "the device's CPU has VNNI", "sdot": "Arm dot-product", "smmla": "Arm i8mm"}


@dataclass(frozen=True)
class QdqForm:
    """How the QDQ ONNX is laid out for the device that runs it.

    Attributes:
        reduce_range: 7-bit weights (``[-64, 63]``) instead of 8-bit.
        reason: Why, in words the report shows ("7-bit weights: the device's CPU lacks VNNI ...").
        int8_dot: The device's INT8 dot-product instruction (``vnni``, ``vpmaddubsw``, ``sdot``...).
        cpu_source: Where the CPU facts came from (``this host``, a target YAML, ``not stated``).
        layout: The name of the QDQ layout (``u8s8``: unsigned asymmetric activations and signed
            weights, as ``onnxruntime.quantization`` writes them by default; a backend with a layout of
            its own names it).
        label: What the record and report call an artifact of this layout.
        writer: The function that writes this layout (default: :func:`edgekit.quantize.ptq.quantize_int8`),
            ``(fp32, out, calibration, *, method, reduce_range, keep_float, progress) -> QuantResult``.
        single_layer_writer: Its writer for one layer alone, what the sensitivity ranking measures
            (default: :func:`edgekit.quantize.ptq.run_quantize_static`),
            ``(prepared, out, cache, method, per_channel, excluded, nodes_to_quantize, reduce_range)``.
    """

    reduce_range: bool = False
    reason: str = "8-bit weights"
    int8_dot: str = "unknown"
    cpu_source: str = "not stated"
    layout: str = "u8s8"
    label: str = "QDQ"
    writer: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    single_layer_writer: Callable[..., None] | None = field(default=None, repr=False, compare=False)

    @property
    def quantizer(self) -> Callable[..., Any]:
        """The function that writes this layout (:attr:`writer`)."""
        if self.writer is not None:
            return self.writer
        from edgekit.quantize.ptq import quantize_int8

        return quantize_int8

    @property
    def layer_writer(self) -> Callable[..., None]:
        """This layout's writer for one layer alone (:attr:`single_layer_writer`)."""
        if self.single_layer_writer is not None:
            return self.single_layer_writer
        from edgekit.quantize.ptq import run_quantize_static

        return run_quantize_static

    @property
    def weight_bits(self) -> int:
        """7 with ``reduce_range``, else 8."""
        return 7 if self.reduce_range else 8

    def auto_weight_ranges(self) -> tuple[bool, ...]:
        """``reduce_range`` settings ``--calibrator auto`` measures: both only where both can win.

        On a known CPU without VNNI, 7-bit weights avoid saturation but halve the levels, so the
        device's own outputs decide; elsewhere the form is settled.
        """
        if self.reduce_range and self.int8_dot != "unknown":
            return (True, False)
        return (self.reduce_range,)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``artifact.json`` and the record."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        return {**data, "weight_bits": self.weight_bits}


def ort_qdq_form(cpu: dict[str, Any] | None, source: str = "not stated") -> QdqForm:
    """Decide ONNX Runtime's weight range for a device CPU (``{"arch", "features", ...}`` or None).

    Example:
        >>> ort_qdq_form({"arch": "x86_64", "features": ["avx2", "fma"]}).weight_bits
        7
        >>> ort_qdq_form({"arch": "x86_64", "features": ["avx2", "avx512_vnni"]}).weight_bits
        8
        >>> ort_qdq_form({"arch": "aarch64", "features": ["asimd"]}).reduce_range
        False
    """
    arch = str((cpu or {}).get("arch") or "")
    dot = int8_dot(arch, list((cpu or {}).get("features") or [])) if arch else "unknown"
    if dot in NO_SATURATION:
        return QdqForm(False, f"8-bit weights: {NO_SATURATION[dot]} (no int16 saturation)", dot, source)
    if arch.startswith(("aarch64", "arm")):
        return QdqForm(False, "8-bit weights: Arm INT8 kernels widen before adding", dot, source)
    if dot == "unknown":
        reason = (
            "7-bit weights: the device's instruction set is not known (state cpu.features in the "
            "target YAML); 7-bit weights cannot saturate on any CPU"
        )
        return QdqForm(True, reason, dot, source)
    reason = (
        "7-bit weights: the device's CPU lacks VNNI, and ONNX Runtime's u8s8 kernels "
        f"({dot}) saturate with full-range weights"
    )
    return QdqForm(True, reason, dot, source)


def host_qdq_form() -> QdqForm:
    """The form for ONNX Runtime on *this* host (for measurements made here, e.g. sensitivity)."""
    return ort_qdq_form(cpu_features(), "this host")
