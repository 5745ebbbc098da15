"""What is inside a ``.mnn`` file: MNN's own JSON dump, summarised (which convolutions are INT8).

A quantized MNN model keeps its op list; what changes is each ``Convolution``'s parameters: a float
model stores ``weight``, an INT8 one stores ``quanParameter`` (int8 weights, the input and output
activation scales) and ``symmetricQuan`` with ``outputDataType: DT_INT8``. Counting those tells, from
the file alone, whether the quantizer really quantized the model and how much of it.

The dump runs ``mnnconvert -f MNN --JsonFile`` through :mod:`edgekit.backends.mnn.tools`' safe tool
runner (a subprocess, no pip, no telemetry).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.backends.mnn import tools as mnn_tools
from edgekit.core.errors import BuildError

_CONV_TYPES = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise")


@dataclass(frozen=True)
class GraphSummary:
    """The computing layers of a ``.mnn`` model and how many of them run in INT8.

    Attributes:
        ops: Number of ops in the model.
        conv_layers: Convolution-like ops (the layers MNN's quantizer can quantize).
        int8_layers: Those that run in INT8: int8 weights with INT8 output (``symmetricQuan``) between an
            input and an output tensor typed INT8 (see :mod:`edgekit.backends.mnn.floats`).
        scale_min: Smallest activation scale (``scaleIn``/``scaleOut``) over the INT8 layers, or 0.
        scale_max: Largest activation scale over the INT8 layers, or 0.
        float_layers: Convolutions holding int8 weights that run in float (a tensor at either end is
            not typed INT8), by op name.
    """

    ops: int
    conv_layers: int
    int8_layers: int
    scale_min: float
    scale_max: float
    float_layers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (for ``artifact.json``)."""
        return asdict(self)


def dump_json(mnn_path: str | Path, out_json: str | Path, timeout: float = 120) -> Path:
    """Write MNN's JSON description of ``mnn_path`` to ``out_json``.

    Raises:
        BuildError: The tool failed or wrote nothing.
    """
    src, out = Path(mnn_path).resolve(), Path(out_json).resolve()
    argv = ["mnnconvert", "-f", "MNN", "--modelFile", str(src), "--JsonFile", str(out)]
    log = mnn_tools.run_tool(argv, out.parent, timeout)
    if log.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise BuildError(
            f"MNN cannot describe {src.name} (exit {log.returncode}):\n{log.tail()}", "rebuild it"
        )
    return out


def summarize(graph: dict[str, Any]) -> GraphSummary:
    """Count the convolution-like ops of a parsed JSON dump and those that are INT8."""
    ops = graph.get("oplists") or []
    convs = [op.get("main") or {} for op in ops if op.get("type") in _CONV_TYPES]
    typed = {
        int(d.get("index", 0)): (d.get("quantInfo") or {}).get("type", "DT_INT8")
        for d in graph.get("extraTensorDescribe") or []
        if d.get("quantInfo")
    }

    def runs_int8(op: dict) -> bool:  # MNN runs a conv in INT8 only between two INT8-typed tensors
        if ((op.get("main") or {}).get("symmetricQuan") or {}).get("outputDataType") != "DT_INT8":
            return False
        tensors = [*(op.get("inputIndexes") or [])[:1], *(op.get("outputIndexes") or [])[:1]]
        return all(typed.get(t) == "DT_INT8" for t in tensors)

    int8 = [op.get("main") or {} for op in ops if op.get("type") in _CONV_TYPES and runs_int8(op)]
    floats = tuple(
        op.get("name", "")
        for op in ops
        if op.get("type") in _CONV_TYPES and (op.get("main") or {}).get("quanParameter") and not runs_int8(op)
    )
    scales = [
        float(s)
        for m in int8
        for s in (
            (m.get("quanParameter") or {}).get("scaleIn"),
            (m.get("quanParameter") or {}).get("scaleOut"),
        )
        if s
    ]
    return GraphSummary(
        len(ops), len(convs), len(int8), min(scales, default=0.0), max(scales, default=0.0), floats
    )


def load_graph(mnn_path: str | Path) -> dict[str, Any]:
    """MNN's JSON description of ``mnn_path``, parsed (ops, tensor names, tensor quantization).

    Raises:
        BuildError: MNN cannot describe the file.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-mnn-json-") as tmp:
        out = dump_json(mnn_path, Path(tmp) / "model.json")
        try:
            return json.loads(out.read_text())
        except ValueError as exc:
            raise BuildError(f"MNN's JSON dump of {mnn_path} is not JSON: {exc}", "rebuild it") from exc


def describe(mnn_path: str | Path) -> GraphSummary:
    """Summarise the ``.mnn`` at ``mnn_path`` (see :class:`GraphSummary`).

    Raises:
        BuildError: MNN cannot describe the file.

    Example:
        >>> describe("out/mnn-int8/model.mnn")  # doctest: +SKIP
        GraphSummary(ops=30, conv_layers=2, int8_layers=2, scale_min=0.002, scale_max=0.0078)
    """
    return summarize(load_graph(mnn_path))
