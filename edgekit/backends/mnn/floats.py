"""Convolutions of an INT8 ``.mnn`` kept in float: a detector's prediction convs.

MNN's CPU backend runs an op in INT8 when its input and output tensors carry an INT8 ``quantInfo``
(``extraTensorDescribe`` in the model file; ``CPUBackend::onCreate``); MNN's quantizer has no working
per-layer exclusion (its EMA method ignores ``skip_quant_op_names``). Typing a convolution's input and
output tensors float makes MNN run it in float on its int8 weights, which MNN dequantizes (typing only the
output gives garbage: measured, scores cosine 0.06 on a real YOLOv8n). ``edgekit build`` does this for a
detector's prediction convolutions, whose outputs become boxes and class scores. Measured on the
converged reference (``make deploy TARGET=rk3588-mnn DEVICE=local RECIPE=none``): mAP@0.5:0.95 0.622
(FP32) -> 0.594 with every convolution INT8, 0.621 with the two prediction convolutions float.

Typing the data-movement tensors MNN also quantizes (a C2f block's split and concat) is not done: it
changes MNN's internal state in ways measured to give garbage (slice, permute) or crash (pooling, resize).

The edit is made in the flatbuffer itself (``TensorQuantInfo.type`` set to ``DT_FLOAT`` and its scale
nudged by one part in a million, so no op sees equal input and output scales), not through MNN's JSON
round trip, which prints weights and scales with six decimals.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import BuildError

_CONV_TYPES = ("Convolution", "ConvolutionDepthwise")
#: ``DataType`` values of MNN's schema (``schema/default/Type.fbs``).
_DT_FLOAT, _DT_INT8 = 1, 6
#: Field slots in MNN's schema: ``Net.extraTensorDescribe``, ``TensorDescribe.index``/``quantInfo``,
#: ``TensorQuantInfo.scale``/``type``.
_NET_DESCRIBE, _DESC_INDEX, _DESC_QUANT, _QUANT_SCALE, _QUANT_TYPE = 1, 1, 4, 0, 4
_NUDGE = 1.0 + 2.0**-20


@dataclass(frozen=True)
class FloatPlan:
    """Which tensors of an INT8 model to type float, and why.

    Attributes:
        head: Names of the convolutions kept in float: those asked for, and the ones feeding them
            directly.
        head_tensors: Their input and output tensor indexes (a convolution typed float at its output
            alone reads an INT8 input as float: both ends must be float).
    """

    head: tuple[str, ...]
    head_tensors: tuple[int, ...]

    def indexes(self) -> list[int]:
        """Every tensor index to type float."""
        return sorted(set(self.head_tensors))


def _int8_tensors(graph: dict[str, Any]) -> set[int]:
    return {
        int(d.get("index", 0))
        for d in graph.get("extraTensorDescribe") or []
        if (d.get("quantInfo") or {}).get("type", "DT_INT8") == "DT_INT8" and d.get("quantInfo")
    }


def _producers(graph: dict[str, Any]) -> dict[int, dict]:
    return {t: op for op in graph.get("oplists") or [] for t in op.get("outputIndexes") or []}


def _is_decode_conv(op: dict) -> bool:
    """A one-output-channel convolution in a decode tail (YOLOv8's DFL expectation), not a prediction."""
    common = (op.get("main") or {}).get("common") or {}
    return op.get("type") in _CONV_TYPES and common.get("outputCount") == 1


def head_convs(graph: dict[str, Any], depth: int = 0) -> list[str]:
    """Convolutions that reach a model output through at most ``depth`` other convolutions.

    At ``depth`` 0 these are a detector's prediction convs; a one-channel decode conv (DFL) on the way
    is walked through. Each step of ``depth`` adds the convolutions feeding the ones found.
    """
    ops = graph.get("oplists") or []
    producers = _producers(graph)
    consumed = {t for op in ops for t in op.get("inputIndexes") or []}
    frontier = [t for op in ops for t in op.get("outputIndexes") or [] if t not in consumed]
    found: list[str] = []
    for _ in range(depth + 1):
        level, seen, stack = [], set(), list(frontier)
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            op = producers.get(tensor)
            if op is None:
                continue
            if op.get("type") in _CONV_TYPES and not _is_decode_conv(op) and op["name"] not in found:
                level.append(op)
                continue
            stack.extend(op.get("inputIndexes") or [])
        found.extend(op["name"] for op in level)
        frontier = [t for op in level for t in op.get("inputIndexes") or []]
    return found


def plan(graph: dict[str, Any], float_convs: list[str]) -> FloatPlan:
    """The tensors to type float to run ``float_convs`` in float.

    Both ends of each are typed float. A quantized convolution that feeds one of them directly (no op
    between) would then write a float-typed output from INT8 inputs, a state MNN computes wrongly: it is
    kept in float too, and so on upwards.

    Raises:
        BuildError: A name is not a convolution of the model.
    """
    by_name = {op.get("name"): op for op in graph.get("oplists") or [] if op.get("type") in _CONV_TYPES}
    missing = [n for n in float_convs if n not in by_name]
    if missing:
        raise BuildError(
            f"no convolution named {', '.join(missing[:4])} in the MNN model",
            f"use convolution names of the .mnn, e.g. {', '.join(list(by_name)[-3:])}",
        )
    int8, producers = _int8_tensors(graph), _producers(graph)
    todo, floated, tensors = list(float_convs), [], set()
    while todo:  # a conv whose output is typed float must have its input typed float too, and so on up
        op = by_name[todo.pop()]
        if op["name"] in floated:
            continue
        floated.append(op["name"])
        ends = [*(op.get("inputIndexes") or [])[:1], *(op.get("outputIndexes") or [])[:1]]
        tensors.update(t for t in ends if t in int8)
        feeder = producers.get((op.get("inputIndexes") or [None])[0]) or {}
        if feeder.get("type") in _CONV_TYPES and (feeder.get("main") or {}).get("quanParameter"):
            todo.append(feeder["name"])
    return FloatPlan(tuple(floated), tuple(sorted(tensors)))


def type_float(src: str | Path, dst: str | Path, indexes: list[int]) -> int:
    """Write ``src`` to ``dst`` with the ``quantInfo`` of tensors ``indexes`` typed float.

    Returns:
        How many tensor descriptions were changed.

    Raises:
        BuildError: The file is not a flatbuffer MNN model as expected.
    """
    buf = bytearray(Path(src).read_bytes())
    wanted, changed = set(indexes), 0
    try:
        describes = _vector(buf, _field(buf, _table(buf, 0), _NET_DESCRIBE))
        for desc in describes:
            index_at = _field(buf, desc, _DESC_INDEX)
            index = struct.unpack_from("<i", buf, index_at)[0] if index_at else 0
            quant_at = _field(buf, desc, _DESC_QUANT)
            if index not in wanted or quant_at is None:
                continue
            quant = _table(buf, quant_at)
            type_at, scale_at = _field(buf, quant, _QUANT_TYPE), _field(buf, quant, _QUANT_SCALE)
            if type_at is None or struct.unpack_from("<i", buf, type_at)[0] != _DT_INT8:
                continue
            struct.pack_into("<i", buf, type_at, _DT_FLOAT)
            if scale_at is not None:
                scale = struct.unpack_from("<f", buf, scale_at)[0]
                struct.pack_into("<f", buf, scale_at, scale * _NUDGE)
            changed += 1
    except (struct.error, IndexError) as exc:
        raise BuildError(
            f"{Path(src).name} is not an MNN model edgekit can read: {exc}", "rebuild it"
        ) from exc
    Path(dst).write_bytes(bytes(buf))
    return changed


def _table(buf: bytearray, at: int) -> int:
    return at + struct.unpack_from("<I", buf, at)[0]


def _field(buf: bytearray, table: int, slot: int) -> int | None:
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    if 4 + 2 * slot >= struct.unpack_from("<H", buf, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buf, vtable + 4 + 2 * slot)[0]
    return table + offset if offset else None


def _vector(buf: bytearray, at: int | None) -> list[int]:
    if at is None:
        return []
    start = _table(buf, at)
    count = struct.unpack_from("<I", buf, start)[0]
    return [_table(buf, start + 4 + 4 * i) for i in range(count)]
