"""The TFLite Micro model's int8 interface: its input and raw-map outputs, and what the bundle says of them.

The converter reports the flatbuffer's tensors; here they become the ``tflm`` section of
``artifact.json`` that the runners read (``io_spec``: the input's scale and zero point, each decode scale's
map, and the channel groups of a map split into several int8 outputs), the bundle's tensor list and the
notes of its README.
"""

from __future__ import annotations

import re
from typing import Any

from edgekit.backends.tflm.bundle import TensorInfo
from edgekit.core.errors import BuildError


def io_spec(report: dict[str, Any], decode: dict[str, Any], layout: str) -> dict[str, Any]:
    """The model's int8 input and its outputs matched to the decode's scales by map size."""
    inp = report["inputs"][0]
    h = int(inp["shape"][1] if layout == "NHWC" else inp["shape"][2])
    outputs = _maps(report, "NHWC" if layout == "NHWC" else "NCHW")
    ordered: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    for scale in decode["maps"]:
        size = h // int(scale["stride"])
        match = [
            o
            for o in outputs
            if (o["shape"][1] if o["layout"] == "NHWC" else o["shape"][2]) == size
            and scale.get("channels", _channels(o)) == _channels(o)
            and not any(o is done for done in used)
        ]
        # without a channel count a size must match exactly one output; with one, the first unused match
        ambiguous = len(match) > 1 and "channels" not in scale
        if ambiguous or not match:
            raise BuildError(
                f"cannot match the outputs {[o['shape'] for o in outputs]} to stride {scale['stride']}",
                "the raw program's outputs must be one map per decode scale",
            )
        used.append(match[0])
        ordered.append({**match[0], "stride": int(scale["stride"])})
    return {"input": {**_quant(inp), "layout": layout}, "outputs": ordered}


def _maps(report: dict[str, Any], layout: str) -> list[dict[str, Any]]:
    """The model's outputs as raw maps: a map split into channel groups is one entry with its ``parts``.

    litert names the outputs ``..._output_<n>_...`` in the program's output order; the converter's
    ``output_groups`` lists, per program output, the channels each of its parts holds.
    """
    outs = [{**_quant(o), "index": i, "layout": layout} for i, o in enumerate(report["outputs"])]
    groups = report.get("output_groups")
    if not groups:
        return outs
    order = sorted(outs, key=lambda o: _output_number(o["name"], o["index"]))
    if sum(len(g or [None]) for g in groups) != len(order):
        raise BuildError(
            f"the converter's output groups ({groups}) do not cover the model's {len(order)} outputs",
            "this is a converter bug: rebuild with quantizer.split_outputs = false",
        )
    maps, k = [], 0
    for g in groups:
        parts = order[k : k + len(g or [None])]
        k += len(parts)
        if g is None or len(g) == 1:
            maps.append(parts[0])
            continue
        axis = 3 if layout == "NHWC" else 1
        shape = list(parts[0]["shape"])
        shape[axis] = sum(len(c) for c in g)
        maps.append(
            {
                **parts[0],
                "shape": shape,
                "scale": None,
                "zero_point": None,
                "parts": [{**p, "channels": list(c)} for p, c in zip(parts, g, strict=True)],
            }
        )
    return maps


def _output_number(name: str, index: int) -> int:
    found = re.search(r"output_(\d+)", name)
    return int(found.group(1)) if found else index


def _group_notes(io: dict[str, Any]) -> list[str]:
    split = [o for o in io["outputs"] if o.get("parts")]
    if not split:
        return []
    text = "; ".join(
        f"stride {o['stride']}: "
        + ", ".join(f"output {p['index']} = channels {_span(p['channels'])}" for p in o["parts"])
        for o in split
    )
    return [
        "Each raw map comes as several int8 outputs, one per group of channels with a similar range (box "
        f"sizes, box offsets, scores), each with its own scale: {text}. Dequantize each and put its "
        "channels back in place before decoding."
    ]


def _span(channels: list[int]) -> str:
    return ",".join(str(c) for c in channels)


def _channels(o: dict[str, Any]) -> int:
    return int(o["shape"][3] if o["layout"] == "NHWC" else o["shape"][1])


def _quant(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": t.get("name", ""),
        "shape": [int(d) for d in t["shape"]],
        "dtype": str(t["dtype"]).lower(),
        "scale": float(t.get("scale") or 0.0),
        "zero_point": int(t.get("zero_point") or 0),
    }


def tensor_info(t: dict[str, Any]) -> TensorInfo:
    """One int8 tensor of the io spec as the bundle's ``model_settings.h`` lists it."""
    return TensorInfo(t["name"], tuple(t["shape"]), t["dtype"], t["scale"], t["zero_point"])


def bundle_notes(
    arena: dict[str, Any], budget: dict[str, Any], decode: dict[str, Any], io: dict[str, Any]
) -> list[str]:
    """The README's notes on the arena, the budget, the outputs and how to decode them."""
    notes = [
        f"Arena: {arena['note']} (recorded {arena['recorded_bytes']}, bisected {arena['bisected_bytes']} B).",
        f"Flash ~{budget['flash_bytes']:,} B, RAM ~{budget['ram_bytes']:,} B: {budget['note']}.",
    ]
    notes += _group_notes(io)
    if decode.get("kind") == "onnx-tail":
        maps = ", ".join(f"{m['name']} (stride {m['stride']}, {m['channels']} ch)" for m in decode["maps"])
        return notes + [
            f"Outputs are the raw prediction maps {maps} of your ONNX, in NHWC; its decode is the rest of "
            f"that ONNX, shipped beside the model as {decode['tail']} (ported to C by the application, or "
            "run on the host that reads the board)."
        ]
    strides = ", ".join(f"stride {m['stride']} (box prior {m['prior']:g} px)" for m in decode["maps"])
    return notes + [
        f"Outputs are the raw prediction maps at {strides}; decode each cell as detcore.decode_raw does: "
        "xy = (cell + 2 sigmoid(t) - 0.5) * stride, wh = (2 sigmoid(t))^2 * prior, scores = sigmoid.",
    ]
