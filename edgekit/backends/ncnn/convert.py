"""TorchScript/ONNX -> ncnn through pnnx, with the checks pnnx itself does not make.

pnnx exits 0 on models it could not convert: it leaves pnnx-internal layers (``Tensor.slice``,
``pnnx.Expression``) in the ``.param`` or writes layers the ncnn runtime does not have. So
:func:`convert_with_pnnx` parses the result and loads it in the ncnn wheel (in a subprocess, because a
malformed model can crash the loader) before returning it. Prefer TorchScript input: pnnx's ONNX path
was measured to drop a ReduceSum's axes silently (``shared/research/toolchains-a.md``, section 3).

Nothing here imports ncnn or torch at module import time.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.ncnn.format import NcnnLayer, graph_io, input_channels, int8_layers, read_param
from edgekit.core.errors import (
    BuildError,
    ConfigError,
    DataError,
    MissingExtraError,
    ModelError,
    UnsupportedOpError,
)
from edgekit.core.files import atomic_write_bytes

BACKEND = "ncnn"
PNNX_TIMEOUT_S = 600.0
_SOURCES = {".pt": "TorchScript", ".torchscript": "TorchScript", ".onnx": "ONNX"}
_UNREGISTERED = re.compile(r"layer (\S+) not exists or registered")
_OP_HINTS = {
    "Tensor.slice": "strided slices (x[..., ::2, ::2], YOLOv5's Focus) have no ncnn layer: use a 6x6 "
    "stride-2 Conv instead of Focus (as YOLOv5 v6+ does)",
    "pnnx.Expression": "an expression pnnx could not lower, often post-processing such as NMS: keep NMS "
    "and box decoding out of the exported graph",
}
_LOAD_CHECK = """
import json, sys
import ncnn
net = ncnn.Net()
net.opt.use_vulkan_compute = False
net.opt.use_int8_inference = True
rp = net.load_param(sys.argv[1])
rm = net.load_model(sys.argv[2]) if rp == 0 else None
print(json.dumps({"load_param": rp, "load_model": rm}))
"""


@dataclass(frozen=True)
class NcnnModel:
    """An ncnn model on disk and what its ``.param`` says.

    Attributes:
        param: The ``.ncnn.param`` file.
        bin: The ``.ncnn.bin`` file.
        inputs: Input blob names (pnnx names them ``in0``, ``in1``...).
        outputs: Output blob names (``out0``...).
        layers: Every layer, in file order.
        fp16: Whether float weights are stored as fp16.
        log: pnnx's log, when the model came from :func:`convert_with_pnnx`.
    """

    param: Path
    bin: Path
    inputs: list[str]
    outputs: list[str]
    layers: list[NcnnLayer] = field(repr=False)
    fp16: bool = False
    log: Path | None = None

    @classmethod
    def from_files(cls, param: str | Path, bin: str | Path, **kwargs: Any) -> NcnnModel:  # noqa: A002
        """Describe an existing ``.param``/``.bin`` pair."""
        layers = read_param(param)
        inputs, outputs = graph_io(layers)
        return cls(Path(param), Path(bin), inputs, outputs, layers, **kwargs)


def import_ncnn() -> Any:
    """Import the ncnn Python binding, or explain which extra provides it."""
    try:
        import ncnn
    except ImportError as exc:
        raise MissingExtraError("the ncnn runtime is not installed", "pip install 'edgekit[ncnn]'") from exc
    return ncnn


def find_pnnx() -> Path:
    """Locate the pnnx executable: the wheel's bundled binary, the venv's ``bin``, then ``PATH``.

    Raises:
        MissingExtraError: pnnx is not installed.
    """
    spec = importlib.util.find_spec("pnnx")  # finds the package without importing torch
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pnnx" for p in spec.submodule_search_locations]
    candidates.append(Path(sys.executable).parent / "pnnx")
    on_path = shutil.which("pnnx")
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingExtraError("the pnnx converter is not installed", "pip install 'edgekit[ncnn]'")


def export_torchscript(model: Any, input_shape: list[int], path: str | Path) -> Path:
    """Trace ``model`` in eval mode without gradients and save it as TorchScript (atomically).

    Args:
        model: A ``torch.nn.Module``.
        input_shape: Example input shape, e.g. ``[1, 3, 160, 160]``.
        path: Where to write the ``.pt``.

    Example:
        >>> export_torchscript(net, [1, 3, 96, 96], "work/det.pt")  # doctest: +SKIP
        PosixPath('work/det.pt')
    """
    import torch

    model = model.eval()
    example = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    # torch 2.13 deprecates TorchScript, but it is pnnx's reliable input (its ONNX path lost axes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def convert_with_pnnx(
    source: str | Path,
    input_shape: list[int],
    work: str | Path,
    fp16: bool,
    *,
    timeout_s: float = PNNX_TIMEOUT_S,
) -> NcnnModel:
    """Convert a TorchScript ``.pt`` (preferred) or an ``.onnx`` to ncnn and check the result loads.

    Args:
        source: The model to convert.
        input_shape: Input shape, batch first (``[1, 3, H, W]``).
        work: Folder for ``model.ncnn.param``, ``model.ncnn.bin`` and ``pnnx.log``.
        fp16: Store float weights as fp16 (pnnx's default); ``False`` keeps fp32, which int8
            calibration needs.
        timeout_s: Give up on pnnx after this long.

    Returns:
        The checked model.

    Raises:
        UnsupportedOpError: The result holds layers the ncnn runtime cannot run; the hint names them.
        BuildError: pnnx failed, timed out or wrote a model that does not load.

    Example:
        >>> model = convert_with_pnnx("det.pt", [1, 3, 160, 160], "work/ncnn", fp16=False)  # doctest: +SKIP
        >>> model.inputs, model.outputs  # doctest: +SKIP
        (['in0'], ['out0'])
    """
    source = _check_source(Path(source))
    work = Path(work).resolve()  # pnnx runs in another folder: every path it is given must be absolute
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pnnx.", dir=work) as tmp:
        param, bin_, log = _run_pnnx(source, input_shape, Path(tmp), fp16, timeout_s)
        atomic_write_bytes(work / "pnnx.log", log.encode())
        check_layer_types(read_param(param), log)
        check_loads(param, bin_)
        for produced in (param, bin_):
            os.replace(produced, work / produced.name)
    return NcnnModel.from_files(work / param.name, work / bin_.name, fp16=fp16, log=work / "pnnx.log")


def _check_source(source: Path) -> Path:
    if not source.is_file():
        raise ModelError(f"model {source} does not exist", "export the model first")
    if source.suffix.lower() not in _SOURCES:
        raise ModelError(
            f"pnnx converts TorchScript (.pt) or ONNX (.onnx), not {source.name}",
            "export with edgekit.backends.ncnn.convert.export_torchscript",
        )
    return source.resolve()


def _run_pnnx(
    source: Path, input_shape: list[int], tmp: Path, fp16: bool, timeout_s: float
) -> tuple[Path, Path, str]:
    """Run pnnx with every output inside ``tmp``; return (param, bin, log)."""
    tmp = tmp.resolve()
    model = tmp / f"model{source.suffix.lower()}"
    model.symlink_to(source)
    outputs = {
        "ncnnparam": tmp / "model.ncnn.param",
        "ncnnbin": tmp / "model.ncnn.bin",
        "ncnnpy": tmp / "model_ncnn.py",
        "pnnxparam": tmp / "model.pnnx.param",
        "pnnxbin": tmp / "model.pnnx.bin",
        "pnnxpy": tmp / "model_pnnx.py",
        "pnnxonnx": tmp / "model.pnnx.onnx",
    }
    argv = [str(find_pnnx()), str(model), f"inputshape={_shape_arg(input_shape)}", f"fp16={int(fp16)}"]
    argv += [f"{key}={path}" for key, path in outputs.items()]
    try:
        done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"pnnx did not finish within {timeout_s:.0f} s", _tail_hint(exc.stdout)) from exc
    log = (done.stdout or "") + (done.stderr or "")
    param, bin_ = outputs["ncnnparam"], outputs["ncnnbin"]
    if done.returncode != 0 or not param.is_file() or not bin_.is_file():
        raise BuildError(
            f"pnnx exited {done.returncode} converting {source.name}"
            + ("" if param.is_file() else " and wrote no ncnn model"),
            _tail_hint(log),
        )
    return param, bin_, log


def _shape_arg(input_shape: list[int]) -> str:
    if not input_shape or any(not isinstance(d, int) or d <= 0 for d in input_shape):
        raise ModelError(
            f"input shape {input_shape} is not a list of positive integers", "e.g. [1,3,160,160]"
        )
    return "[" + ",".join(str(d) for d in input_shape) + "]"


def _tail_hint(log: str | bytes | None, lines: int = 12) -> str:
    text = log.decode(errors="replace") if isinstance(log, bytes) else (log or "")
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"last lines of the pnnx log:\n{tail}" if tail else "pnnx printed nothing"


def check_layer_types(layers: list[NcnnLayer], log: str = "") -> None:
    """Reject layers pnnx left unconverted: their type contains a dot (``Tensor.slice``).

    Raises:
        UnsupportedOpError: Naming each op type and the layers that use it.
    """
    leftovers: dict[str, list[str]] = {}
    for layer in layers:
        if "." in layer.type:
            leftovers.setdefault(layer.type, []).append(layer.name)
    if leftovers:
        raise UnsupportedOpError(BACKEND, list(leftovers), _leftover_hint(leftovers, log))


def _leftover_hint(leftovers: dict[str, list[str]], log: str) -> str:
    parts = []
    for op, names in sorted(leftovers.items()):
        where = ", ".join(f"'{n}'" for n in names[:5])
        advice = _OP_HINTS.get(op, "rewrite this part of the model with standard layers")
        ignored = [line.strip() for line in log.splitlines() if line.startswith("ignore") and op in line]
        detail = f" (pnnx: {ignored[0]})" if ignored else ""
        parts.append(f"pnnx left {op} in layer(s) {where} unconverted{detail}; {advice}")
    return "; ".join(parts)


def check_loads(param: str | Path, bin: str | Path, *, timeout_s: float = 120.0) -> None:  # noqa: A002
    """Load the model in the ncnn wheel in a subprocess (a malformed model may crash the loader).

    Raises:
        UnsupportedOpError: ncnn reports ``layer X not exists or registered``.
        BuildError: Loading failed for another reason, or crashed.
    """
    import_ncnn()  # a missing wheel is a MissingExtraError here, not a confusing subprocess failure
    argv = [sys.executable, "-c", _LOAD_CHECK, str(param), str(bin)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    unregistered = sorted(set(_UNREGISTERED.findall(done.stderr)))
    if unregistered:
        layers = read_param(param)
        names = [f"{layer.type} '{layer.name}'" for layer in layers if layer.type in unregistered]
        hint = f"ncnn has no layer for {', '.join(names[:5]) or ', '.join(unregistered)}; " + (
            "rewrite these ops with standard layers, or pick another backend"
        )
        raise UnsupportedOpError(BACKEND, unregistered, hint)
    result = _load_result(done.stdout)
    if done.returncode != 0 or result.get("load_param") != 0 or result.get("load_model") != 0:
        raise BuildError(
            f"the ncnn runtime cannot load {Path(param).name} "
            f"(exit {done.returncode}, {result or 'crashed'})",
            _tail_hint(done.stderr) if done.stderr.strip() else "regenerate the model with pnnx",
        )


def _load_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def load_net(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    *,
    int8: bool = False,
    fp16: bool = False,
    threads: int = 1,
) -> Any:
    """Load an ``ncnn.Net`` in this process with explicit precision options.

    Args:
        param: The ``.param`` file.
        bin: The ``.bin`` file.
        int8: Set ``opt.use_int8_inference`` (needed to run int8 layers).
        fp16: fp16 storage and arithmetic where the CPU has it; ``False`` computes in fp32.
        threads: ``opt.num_threads``.

    Raises:
        ConfigError: ``int8=False`` for a model with int8 layers (ncnn would silently output NaN).
        BuildError: ncnn refuses the files.
    """
    quantized = int8_layers(read_param(param))
    if quantized and not int8:
        raise ConfigError(
            f"{Path(param).name} has int8 layers ({', '.join(quantized[:3])}) but int8 is off",
            "run it with int8=True (opt.use_int8_inference); without it ncnn outputs NaN",
        )
    ncnn = import_ncnn()
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    opt.use_int8_inference = int8
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
    opt.use_bf16_storage = False
    if net.load_param(str(param)) != 0 or net.load_model(str(bin)) != 0:
        raise BuildError(f"ncnn cannot load {Path(param).name}", "run check_loads() for the reason")
    return net


def run_ncnn(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    x: np.ndarray,
    *,
    int8: bool,
    fp16: bool,
    threads: int = 1,
) -> list[np.ndarray]:
    """Run one ``(1, C, H, W)`` float32 input and return every output with its batch dim restored.

    ncnn has no batch dimension, so ``in0`` receives ``x[0]`` and each output gets a leading 1.

    Example:
        >>> outs = run_ncnn("m.param", "m.bin", x, int8=False, fp16=False)  # doctest: +SKIP
        >>> outs[0].shape  # doctest: +SKIP
        (1, 21, 500)
    """
    return run_ncnn_many(param, bin, [x], int8=int8, fp16=fp16, threads=threads)


def run_ncnn_many(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    xs: list[np.ndarray],
    *,
    int8: bool,
    fp16: bool,
    threads: int = 1,
) -> list[np.ndarray]:
    """:func:`run_ncnn` on each input with one loaded net: every output of every input, in order."""
    layers = read_param(param)
    channels = input_channels(layers)
    for x in xs:
        if x.ndim != 4 or x.shape[0] != 1:
            raise DataError(f"run_ncnn takes one (1, C, H, W) input, got shape {x.shape}", "pass x[None]")
        if channels is not None and x.shape[1] != channels:
            raise DataError(
                f"the model takes {channels} input channels, the input has {x.shape[1]}",
                "preprocess the input as the model expects (ncnn would silently compute garbage)",
            )
    ncnn = import_ncnn()
    inputs, outputs = graph_io(layers)
    net = load_net(param, bin, int8=int8, fp16=fp16, threads=threads)
    results = []
    for x in xs:
        extractor = net.create_extractor()
        extractor.input(inputs[0], ncnn.Mat(np.ascontiguousarray(x[0], dtype=np.float32)).clone())
        for name in outputs:
            ret, mat = extractor.extract(name)
            if ret != 0:
                raise BuildError(
                    f"ncnn failed to compute output {name!r} (code {ret})", "check the input shape"
                )
            results.append(np.array(mat, dtype=np.float32)[None])
    return results
