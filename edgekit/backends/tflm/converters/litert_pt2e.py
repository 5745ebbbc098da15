r"""Float ``torch.export`` program -> full-integer INT8 ``.tflite`` for TFLite Micro (litert-torch PT2E).

Run by the converter venv's python (``.venv-tflite``), never imported by edgekit: litert-torch pins its
own jax/transformers/ai-edge-litert, so the main env talks to it through a subprocess, a ``.pt2`` file
(``torch.export.save``), a calibration ``.npy`` and a JSON report. Imports only torch, litert_torch,
torchao, numpy, the stdlib and its siblings ``output_groups.py`` and ``tflite_graph.py``.

Quantization: PT2E with litert's symmetric config (int8 weights, symmetric, per-channel with
``--per-channel``; int8 per-tensor affine activations from a HistogramObserver, or min-max with
``--observer minmax``), int8 input and output.

Exit codes: 0 ok; 2 bad input, a model litert cannot lower, or a result that is not full-integer
(one line ``litert_pt2e: error: ...`` on stderr, the report still written with ``"ok": false``).

Example:
    .venv-tflite/bin/python edgekit/backends/tflm/converters/litert_pt2e.py --program det.pt2 \\
        --calib calib.npy --out det_int8.tflite --layout NHWC --per-channel --report det_int8.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from output_groups import split_output_convs  # noqa: E402
from tflite_graph import inspect_flatbuffer, problems  # noqa: E402

PROG = "litert_pt2e"
SAME_SCALE_HINT = (
    " (hint: an in-graph decode that reshapes or concatenates sigmoid scores with pixel boxes cannot"
    " share one int8 scale; export only the raw head maps and decode on the host)"
)


class ConvertError(Exception):
    """A failure the caller can act on; printed as one ``litert_pt2e: error:`` line, exit 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (argparse itself exits 2 with ``litert_pt2e: error:`` on bad usage)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--program", required=True, type=Path, help="torch.export.save'd float program (.pt2)")
    p.add_argument("--calib", required=True, type=Path, help="(N,3,H,W) float32 calibration stack (.npy)")
    p.add_argument("--out", required=True, type=Path, help="output .tflite (written atomically)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW", help="layout of the tflite input")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales (else per-tensor)")
    p.add_argument("--report", type=Path, help="write a JSON report here")
    p.add_argument(
        "--split-outputs",
        action="store_true",
        help="split each output conv into channel groups of similar range, each with its own int8 scale",
    )
    p.add_argument(
        "--observer",
        choices=("histogram", "minmax"),
        default="histogram",
        help="activation ranges: histogram (litert default, clips outliers) or minmax (full range seen)",
    )
    p.add_argument(
        "--allow-float",
        action="store_true",
        help="accept float tensors, QUANTIZE/DEQUANTIZE or Flex ops inside the graph (report them, exit 0)",
    )
    return p.parse_args(argv)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_program(path: Path):
    """Load the ExportedProgram and return it with its single input's NCHW shape."""
    import torch

    if not path.is_file():
        raise ConvertError(f"program not found: {path}")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any load failure is a bad input file
        raise ConvertError(f"cannot load {path} with torch.export.load: {first_line(e)}") from e
    inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        raise ConvertError(f"expected a program with one tensor input, got {len(inputs)}")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name)
    val = node.meta["val"]
    shape = tuple(int(d) for d in val.shape)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or not val.dtype.is_floating_point:
        raise ConvertError(f"expected a float (1,3,H,W) input, got {val.dtype} {list(shape)}")
    return ep, shape


def rank4_outputs(ep) -> list[int]:
    """Indices of the program's 4-D outputs (raw maps), which ``--layout NHWC`` also makes channel-last."""
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    vals = [n.meta.get("val") for n in out]
    return [i for i, v in enumerate(vals) if getattr(v, "ndim", 0) == 4]


def load_calibration(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Load and check the ``(N,3,H,W)`` calibration stack against the program's input shape."""
    if not path.is_file():
        raise ConvertError(f"calibration file not found: {path}")
    try:
        calib = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"cannot read {path} as .npy: {first_line(e)}") from e
    if calib.ndim != 4 or tuple(calib.shape[1:]) != shape[1:]:
        want = ",".join(map(str, shape[1:]))
        raise ConvertError(f"calibration stack has shape {list(calib.shape)}, expected (N,{want})")
    if calib.shape[0] == 0:
        raise ConvertError("calibration stack is empty (N=0)")
    if not np.issubdtype(calib.dtype, np.floating):
        raise ConvertError(f"calibration stack must be float32, got {calib.dtype}")
    if not np.isfinite(calib).all():
        raise ConvertError("calibration stack has NaN or infinite values")
    return np.ascontiguousarray(calib, dtype=np.float32)


def float_scalar_operands(graph) -> int:
    """Turn int scalar operands of float arithmetic (``p * 2``) into floats; return how many changed.

    PT2E's prepare turns such scalars into int64 tensor constants and the litert quantizer then
    puts a HistogramObserver on them, which fails with ``"histogram_cpu" not implemented for 'Long'``.
    """
    import torch

    ops = {
        getattr(getattr(torch.ops.aten, name), kind)
        for name in ("add", "sub", "mul", "div", "rsub")
        for kind in ("Tensor", "Scalar")
    }
    changed = 0
    for node in graph.graph.nodes:
        val = node.args[0].meta.get("val") if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if node.op != "call_function" or node.target not in ops or val is None or not val.is_floating_point():
            continue
        changed += sum(type(a) is int for a in node.args)
        node.args = tuple(float(a) if type(a) is int else a for a in node.args)
    graph.recompile()
    return changed


def full_integer_quantizer(pt2e_quantizer):
    """Litert's PT2EQuantizer, plus the global average pools its annotator misses in a re-exported graph.

    litert finds ``adaptive_avg_pool2d`` by the module that produced it (source partitions); a program
    that went through ``torch.export.save``/``load`` and the channel-last rewrite has lost that, so a
    squeeze-and-excite block's pool stays float and leaves QUANTIZE/DEQUANTIZE islands around it. Here
    such a pool (or a ``mean`` over the spatial axes) is annotated as litert annotates one it does find:
    int8 in, and an output sharing its input's scale (TFLite's int8 MEAN/AVERAGE_POOL_2D take that).
    Max pools it misses the same way get what litert gives the ones it finds (the output shares the
    input's scale): TFLite's MAX_POOL_2D keeps its input's scale, and an output PT2E observed on its own
    leaves the next conv's bias quantized for a scale its input does not have (Micro-YOLO's 1x1 conv
    after a pool: int8 stride-16 map at cosine 0.84).
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    pools = {
        torch.ops.aten.adaptive_avg_pool2d.default,
        torch.ops.aten._adaptive_avg_pool2d.default,
        torch.ops.aten.mean.dim,
    }
    # TFLite's MAX_POOL_2D keeps its input's scale; an output observed on its own leaves the next conv's
    # bias quantized for a scale its input tensor does not have (see bias_scale_mismatches)
    same_scale = {torch.ops.aten.max_pool2d.default}

    class FullIntegerQuantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in pools | same_scale:
                    continue
                ann = node.meta.get("quantization_annotation")
                if ann is not None and ann._annotated:
                    continue
                src = node.args[0]
                src_ann = src.meta.get("quantization_annotation")
                quantized_src = (
                    src_ann is not None and src_ann._annotated and src_ann.output_qspec is not None
                )
                if node.target in same_scale:
                    if quantized_src:  # as litert annotates the max pools it finds: the output is the input's
                        node.meta["quantization_annotation"] = QuantizationAnnotation(
                            output_qspec=SharedQuantizationSpec(src), _annotated=True
                        )
                    continue
                if quantized_src:
                    in_spec = SharedQuantizationSpec(src)
                else:
                    in_spec = utils.get_input_act_qspec(self.global_config)
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={src: in_spec},
                    output_qspec=SharedQuantizationSpec((src, node)),
                    _annotated=True,
                )
            return model

    return FullIntegerQuantizer()


def calibrate(graph, quantizer, calib: np.ndarray):
    """PT2E prepare plus one forward per calibration sample."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    try:
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for x in calib:
                prepared(torch.from_numpy(np.ascontiguousarray(x[None])))
        return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    except Exception as e:  # noqa: BLE001 - torchao raises many types for unquantizable graphs
        raise ConvertError(f"PT2E quantization failed: {type(e).__name__}: {first_line(e)}") from e


def split_rank4_outputs(groups: list) -> list[int]:
    """Indices of the 4-D outputs after the split (``None`` in ``groups`` = an output that is not a map)."""
    out, k = [], 0
    for g in groups:
        n = 1 if g is None else len(g)
        out += [] if g is None else list(range(k, k + n))
        k += n
    return out


def quantization_config(pt2e_quantizer, per_channel: bool, observer: str):
    """Litert's symmetric config, with the activation observer swapped when ``observer`` is ``minmax``.

    The configs are built (and cached) when litert is imported, so the observer is replaced in a copy of
    the config rather than by patching litert's module.
    """
    import dataclasses

    cfg = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel)
    if observer == "histogram":
        return cfg
    from torchao.quantization.pt2e.observer import MinMaxObserver

    act = dataclasses.replace(
        cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12)
    )
    return dataclasses.replace(cfg, input_activation=act, output_activation=act)


def quantize(
    ep,
    calib: np.ndarray,
    layout: str,
    per_channel: bool,
    observer: str = "histogram",
    split_outputs: bool = False,
):
    """Quantize with PT2E; return the quantized module, sample args, quantizer, graph rewrites and groups.

    With ``split_outputs`` each conv-made output is split into channel groups of similar range
    (``output_groups.py``); ``groups`` lists them per original output (``None`` = not split).
    """
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer

    module, groups = ep.module(), None
    if split_outputs:
        module, groups = split_output_convs(module, calib)
    if layout == "NHWC":
        maps = rank4_outputs(ep) if groups is None else split_rank4_outputs(groups)
        module = litert_torch.to_channel_last_io(module, args=[0], outputs=maps)
        calib = calib.transpose(0, 2, 3, 1)
    sample = (torch.from_numpy(np.ascontiguousarray(calib[:1])),)
    graph = torch.export.export(module, sample).module()
    rewrites = float_scalar_operands(graph)
    quantizer = full_integer_quantizer(pt2e_quantizer).set_global(
        quantization_config(pt2e_quantizer, per_channel, observer)
    )
    return calibrate(graph, quantizer, calib), sample, quantizer, rewrites, groups


def lower(qmodel, sample, quantizer) -> bytes:
    """Lower the quantized module to a .tflite flatbuffer with litert-torch."""
    import litert_torch
    from litert_torch.quantize import quant_config

    try:
        cfg = quant_config.QuantConfig(pt2e_quantizer=quantizer)
        return litert_torch.convert(qmodel, sample, quant_config=cfg).model_content()
    except Exception as e:  # noqa: BLE001 - litert raises many types for unlowerable ops
        msg = f"litert-torch could not lower the model: {type(e).__name__}: {first_line(e)}"
        if "same scale constraint" in str(e):
            msg += SAME_SCALE_HINT
        raise ConvertError(msg) from e


def versions() -> dict:
    """Versions of the packages that shaped the result."""
    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "litert-torch", "torchao", "ai-edge-litert", "litert-converter", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def first_line(e: BaseException) -> str:
    """First non-empty line of an exception message, trimmed for a one-line error."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def convert(args: argparse.Namespace, report: dict) -> None:
    """The whole conversion; fills ``report`` as it goes and raises :class:`ConvertError`."""
    clock = time.perf_counter()
    ep, shape = load_program(args.program)
    calib = load_calibration(args.calib, shape)
    report["calibration"] = {"samples": len(calib), "min": float(calib.min()), "max": float(calib.max())}
    report["seconds"]["load"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    qmodel, sample, quantizer, rewrites, groups = quantize(
        ep, calib, args.layout, args.per_channel, args.observer, args.split_outputs
    )
    report["int_scalars_made_float"] = rewrites
    report["output_groups"] = groups
    report["seconds"]["quantize"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    data = lower(qmodel, sample, quantizer)
    report["seconds"]["lower"] = round(time.perf_counter() - clock, 3)
    graph = inspect_flatbuffer(data)
    report.update(graph, bytes=len(data), problems=problems(graph))
    if report["problems"] and not args.allow_float:
        raise ConvertError("not a full-integer model: " + "; ".join(report["problems"]) + " (see the report)")
    atomic_write(args.out, data)
    report["ok"], report["tflite"] = True, str(args.out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    start = time.perf_counter()
    report: dict = {
        "ok": False,
        "program": str(args.program),
        "layout": args.layout,
        "per_channel": args.per_channel,
        "observer": args.observer,
        "seconds": {},
        "versions": versions(),
    }
    code = 0
    try:
        convert(args, report)
    except ConvertError as e:
        report["error"] = str(e)
        sys.stderr.write(f"{PROG}: error: {e}\n")
        code = 2
    report["seconds"]["total"] = round(time.perf_counter() - start, 3)
    if args.report:
        atomic_write(args.report, (json.dumps(report, indent=2) + "\n").encode())
    if code == 0:
        sys.stdout.write(
            f"{PROG}: wrote {args.out} ({report['bytes']} B, {sum(report['ops'].values())} ops)\n"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
