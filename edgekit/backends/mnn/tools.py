"""MNN 3.6.1 tools, driven safely: op listing, ONNX conversion, int8 quantization and a runtime check.

Why it looks like this (measured, see ``research/toolchains-a.md``):

- MNN's console scripts import ``MNN.tools``, which runs ``pip install aliyun-log-python-sdk`` and sends
  telemetry. The C++ bindings ``_tools.mnnconvert(argv)`` / ``_tools.mnnquant(argv)`` do neither, so every
  tool runs as ``sys.executable -c <snippet>`` with ``PIP_NO_INDEX=1`` and an empty ``aliyun.log`` stub
  first on ``PYTHONPATH``. A subprocess also keeps a tool segfault from killing the caller.
- Exit codes mean little: a failed conversion and a malformed quantizer config both exit 0 without a
  file. Every run is judged by its log *and* by its output file.
- The quantizer reads images with stb_image (RGBA), optionally centre-crops (``center_crop_h/w``, default
  the whole image) and **stretches** them to ``width`` x ``height`` with a bilinear corner-to-corner affine
  map: no letterbox. A PNG of exactly ``width`` x ``height`` maps pixel to pixel, so edgekit writes its
  own letterboxed canvases (:func:`write_letterboxed_images`) and MNN's resize is the identity.
- Feature ``ADMM`` segfaults after writing an all-zero model; it is refused up front.

The runtime half (:func:`run_mnn`, :func:`check_outputs_sane`, :func:`mnn_version`) lives in
:mod:`edgekit.backends.mnn.runtime` and the calibration-folder half (:func:`calibration_images`,
:func:`write_letterboxed_images`) in :mod:`edgekit.backends.mnn.calib`; both are re-exported here. Nothing
imports ``MNN`` at module import time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.backends.mnn.calib import (
    IMAGE_SUFFIXES,
    ScaleSummary,
    calibration_images,
    scale_summary,
    write_letterboxed_images,
)
from edgekit.backends.mnn.runtime import (
    INSTALL_HINT,
    TESTED_MNN_VERSION,
    check_outputs_sane,
    mnn_version,
    model_input_shape,
    run_mnn,
)
from edgekit.core.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    MissingExtraError,
    ModelError,
    UnsupportedOpError,
)
from edgekit.core.files import atomic_write_json

__all__ = [
    "IMAGE_SUFFIXES",
    "TESTED_MNN_VERSION",
    "QuantLog",
    "ScaleSummary",
    "ToolLog",
    "calibration_images",
    "check_outputs_sane",
    "convert",
    "mnn_version",
    "model_input_shape",
    "quantize",
    "require_supported",
    "run_mnn",
    "scale_summary",
    "supported_onnx_ops",
    "unsupported_ops",
    "write_letterboxed_images",
]

#: The one snippet every tool runs; argv arrives as ``sys.argv[1:]`` so nothing is quoted by hand.
_TOOL_SNIPPET = (
    "import sys, _tools; ok = getattr(_tools, sys.argv[1])(sys.argv[1:]); sys.exit(0 if ok else 3)"
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_QUANT_FAILURES = (
    "Invalid json",
    "input image error",
    "not supported feature quantization method",
    "not supported weight quantization method",
    "calibration data path not set",
    "Can not load model",
    "should be in (0, 127]",
)
_ADMM_REASON = (
    "MNN's ADMM feature quantizer is refused: in MNN 3.6.1 it segfaults after 'Quantize model done!' "
    "and the written model outputs all zeros"
)


@dataclass(frozen=True)
class ToolLog:
    """One MNN tool run.

    Attributes:
        argv: The tool's argv (``argv[0]`` is the ``_tools`` function).
        returncode: The subprocess exit code (negative: killed by that signal).
        output: stdout and stderr merged, carriage returns turned into newlines.
        seconds: Wall time of the run.
        artifact: The file the run produced, at its final path (None if it failed).
    """

    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    artifact: Path | None

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` non-empty lines of the output."""
        return "\n".join([ln for ln in self.output.splitlines() if ln.strip()][-lines:])


@dataclass(frozen=True)
class QuantLog(ToolLog):
    """A quantizer run: the tool log plus the config, the images it saw and the side-car summary."""

    config: dict[str, Any]
    images: tuple[Path, ...]
    sidecar: Path | None
    scales: ScaleSummary | None


# --- environment ------------------------------------------------------------------------------------------


def _require_tools() -> None:
    if importlib.util.find_spec("_tools") is None:
        raise MissingExtraError("MNN's tool bindings (_tools) are not importable", INSTALL_HINT)


@functools.cache
def _aliyun_stub() -> str:
    """A folder holding an empty ``aliyun/log`` package: MNN's telemetry import then fails harmlessly."""
    root = Path(tempfile.mkdtemp(prefix="edgekit-aliyun-stub-"))
    (root / "aliyun" / "log").mkdir(parents=True)
    (root / "aliyun" / "__init__.py").write_text("")
    (root / "aliyun" / "log" / "__init__.py").write_text("")
    import atexit

    atexit.register(shutil.rmtree, root, True)
    return str(root)


def _tool_env() -> dict[str, str]:
    paths = [_aliyun_stub(), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PIP_NO_INDEX": "1", "PYTHONPATH": os.pathsep.join(paths)}


def run_tool(argv: list[str], cwd: Path, timeout: float) -> ToolLog:
    """Run ``_tools.<argv[0]>(argv)`` in a fresh interpreter; a timeout is a :class:`BuildError`."""
    _require_tools()
    cmd = [sys.executable, "-c", _TOOL_SNIPPET, *argv]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=_tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        raise BuildError(
            f"MNN {argv[0]} did not finish within {timeout:g} s; last output:\n{out[-1500:]}",
            "raise the timeout, or check the model/calibration size",
        ) from exc
    output = proc.stdout.replace("\r", "\n")
    return ToolLog(tuple(argv), proc.returncode, output, time.perf_counter() - start, None)


def _raise_if_killed(log: ToolLog) -> None:
    if log.returncode < 0:
        name = signal.Signals(-log.returncode).name if -log.returncode in signal.valid_signals() else "?"
        raise BuildError(
            f"MNN {log.argv[0]} was killed by signal {-log.returncode} ({name}):\n{log.tail()}",
            "MNN's tools crash on some inputs; check the inputs named above or try another method",
        )


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A temp folder next to ``final``: tools write there, results are renamed in only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# --- ops ----------------------------------------------------------------------------------------------------


@functools.cache
def supported_onnx_ops() -> frozenset[str]:
    """The ONNX op types MNN's converter knows (``mnnconvert -f ONNX --OP``), cached per process.

    Raises:
        MissingExtraError: MNN is not installed.
        BuildError: The listing cannot be parsed.

    Example:
        >>> "Conv" in supported_onnx_ops()  # doctest: +SKIP
        True
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-mnn-ops-") as cwd:
        log = run_tool(["mnnconvert", "-f", "ONNX", "--OP"], Path(cwd), timeout=60)
    lines = [ln.strip() for ln in log.output.splitlines()]
    try:
        start = lines.index("Dump ONNX support Ops") + 1
        end = next(i for i, ln in enumerate(lines) if ln.startswith("Total:"))
        ops = frozenset(ln for ln in lines[start:end] if ln)
        expected = int(lines[end].split(":", 1)[1])
    except (ValueError, StopIteration) as exc:
        raise BuildError(f"cannot parse MNN's ONNX op list:\n{log.tail()}", INSTALL_HINT) from exc
    if len(ops) != expected:
        raise BuildError(f"MNN listed {len(ops)} ONNX ops but says Total: {expected}", INSTALL_HINT)
    return ops


def _iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph``, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _iter_nodes(sub)


def unsupported_ops(onnx_model: Any) -> list[tuple[str, str]]:
    """Nodes MNN cannot convert: default-domain ops missing from its list, and every custom-domain op.

    Args:
        onnx_model: An ``onnx.ModelProto`` or a path to an ``.onnx`` file.

    Returns:
        ``(op_type, node_name)`` pairs in graph order; custom-domain ops are ``"domain:OpType"``.

    Example:
        >>> unsupported_ops("det.onnx")  # doctest: +SKIP
        [('ai.edgekit.custom:EdgeKitMagic', 'magic0')]
    """
    if isinstance(onnx_model, str | Path):
        from edgekit.backends.contract.onnx_io import load_onnx

        onnx_model = load_onnx(onnx_model)
    known = supported_onnx_ops()
    found = []
    for node in _iter_nodes(onnx_model.graph):
        if node.domain not in _DEFAULT_DOMAINS:
            found.append((f"{node.domain}:{node.op_type}", node.name))
        elif node.op_type not in known:
            found.append((node.op_type, node.name))
    return found


def require_supported(onnx_model: Any) -> None:
    """Raise :class:`UnsupportedOpError` naming every node :func:`unsupported_ops` finds."""
    bad = unsupported_ops(onnx_model)
    if bad:
        nodes = ", ".join(f"{name or '?'} ({op})" for op, name in bad[:10])
        raise UnsupportedOpError("mnn", [op for op, _ in bad], f"nodes: {nodes}; replace these ops")


# --- convert ------------------------------------------------------------------------------------------------


def convert(onnx_path: str | Path, out_mnn: str | Path, *, fp16: bool, timeout: float = 300) -> ToolLog:
    """Convert an ONNX model to ``.mnn`` (``--fp16`` stores weights as fp16; arithmetic stays fp32).

    Args:
        onnx_path: The ONNX model.
        out_mnn: Where the ``.mnn`` goes; it appears only if the conversion succeeded.
        fp16: Store weights as fp16 (about half the file size).
        timeout: Seconds before the converter is killed.

    Returns:
        The converter's log, ``artifact`` set to ``out_mnn``.

    Raises:
        ModelError: ``onnx_path`` does not exist.
        UnsupportedOpError: The converter printed ``These Op Not Support``.
        BuildError: It crashed, printed ``Converted Failed`` or wrote no file.

    Example:
        >>> convert("det.onnx", "det.mnn", fp16=False).seconds  # doctest: +SKIP
        0.2
    """
    src, out = Path(onnx_path).resolve(), Path(out_mnn).resolve()
    if not src.is_file():
        raise ModelError(f"ONNX file {src} not found", "check the path (export the model first)")
    with _staging(out) as tmp:
        argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(tmp / out.name)]
        log = run_tool([*argv, "--bizCode", "edgekit", *(["--fp16"] if fp16 else [])], tmp, timeout)
        _check_conversion(log, tmp / out.name)
        os.replace(tmp / out.name, out)
    return ToolLog(log.argv, log.returncode, log.output, log.seconds, out)


def _check_conversion(log: ToolLog, written: Path) -> None:
    _raise_if_killed(log)
    match = re.search(r"These Op Not Support:(.*)", log.output)
    if match:
        ops = [op.strip().removeprefix("ONNX::") for op in match.group(1).split("|") if op.strip()]
        raise UnsupportedOpError("mnn", ops, "replace these ops in the model (see supported_onnx_ops())")
    if "Converted Failed" in log.output or log.returncode != 0 or not _nonempty(written):
        raise BuildError(
            f"MNN conversion failed (exit {log.returncode}, "
            f"{'file written' if written.exists() else 'no file'}):\n{log.tail()}",
            "read the converter output above; re-export the ONNX with another opset if an op is at fault",
        )


# --- quantize -----------------------------------------------------------------------------------------------


def quantize(
    src_mnn: str | Path,
    dst_mnn: str | Path,
    images_dir: str | Path,
    *,
    width: int,
    height: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    normal: Sequence[float] = (1 / 255, 1 / 255, 1 / 255),
    fmt: str = "RGB",
    feature_method: str = "EMA",
    weight_method: str = "MAX_ABS",
    used_image_num: int,
    batch_size: int = 8,
    skip_ops: Sequence[str] = (),
    allow_resize: bool = False,
    timeout: float = 600,
) -> QuantLog:
    """Quantize an fp32 ``.mnn`` to int8 with MNN's post-training quantizer.

    MNN computes ``dst = (pixel - mean) * normal`` per channel, in ``fmt`` order, after **stretching** each
    image to ``width`` x ``height``. Pass images already letterboxed to exactly that size
    (:func:`write_letterboxed_images`); other sizes are refused unless ``allow_resize``. The first
    ``used_image_num`` images in name order are used (MNN itself would take them in directory order).
    The model is loaded in-process once to check ``width``/``height`` against its input shape.

    Args:
        src_mnn: The fp32 model (from :func:`convert` without ``fp16``).
        dst_mnn: Where the int8 model goes; its side-car ``<dst>.json`` is kept next to it.
        images_dir: A folder holding only image files (dot-files are ignored, as MNN does).
        width: Model input width; must match the model.
        height: Model input height; must match the model.
        mean: Per-channel mean on 0..255 pixels.
        normal: Per-channel multiplier after subtracting ``mean``.
        fmt: ``RGB`` or ``BGR``: the channel order the model wants (files are read as RGB).
        feature_method: ``EMA`` (best on the 160-px research model) or ``KL``; ``ADMM`` is refused.
        weight_method: ``MAX_ABS`` or ``ADMM``.
        used_image_num: How many images to calibrate on.
        batch_size: EMA batch; ``used_image_num`` must be a multiple (MNN drops the remainder).
        skip_ops: MNN op names to leave in float.
        allow_resize: Let MNN stretch images of another size.
        timeout: Seconds before the quantizer is killed.

    Returns:
        The quantizer's log, config, images and side-car summary.

    Raises:
        ModelError: ``src_mnn`` is missing or empty.
        ConfigError: A bad method, format, size or batch (ADMM features included).
        CalibrationError: The folder is missing, empty, holds a non-image or too few images.
        BuildError: The quantizer crashed, complained or wrote no model.

    Example:
        >>> quantize("det.mnn", "det_int8.mnn", "calib/", width=160, height=160,
        ...          used_image_num=32, feature_method="EMA")  # doctest: +SKIP
    """
    _check_quant_options(feature_method, weight_method, fmt, mean, normal, used_image_num, batch_size)
    src, dst = Path(src_mnn).resolve(), Path(dst_mnn).resolve()
    if not _nonempty(src):
        raise ModelError(f"MNN model {src} not found or empty", "convert the ONNX model first")
    _check_input_size(src, width, height)
    images = calibration_images(images_dir, used_image_num, (width, height), allow_resize)
    config = {
        "format": fmt, "mean": [float(m) for m in mean], "normal": [float(n) for n in normal],
        "width": int(width), "height": int(height), "used_image_num": int(used_image_num),
        "feature_quantize_method": feature_method, "weight_quantize_method": weight_method,
        # EMA: no INT8 Winograd for the 3x3 convs (MNN turns it on by default). Measured on a real YOLOv8n
        # with MNN's ARM kernels (emulated A76): score error 0.086 with it, 0.036 without.
        **({"batch_size": int(batch_size), "winogradOpt": False} if feature_method == "EMA" else {}),
        **({"skip_quant_op_names": list(skip_ops)} if skip_ops else {}),
    }  # fmt: skip
    with _staging(dst) as tmp:
        log = _run_quantizer(src, tmp, dst.name, images, config, timeout)
        sidecar = _publish(tmp / dst.name, dst)
    scales = scale_summary(sidecar) if sidecar else None
    return QuantLog(log.argv, log.returncode, log.output, log.seconds, dst, config, images, sidecar, scales)


def _check_quant_options(
    feature: str, weight: str, fmt: str, mean: Sequence[float], normal: Sequence[float], num: int, batch: int
) -> None:
    if feature == "ADMM":
        raise ConfigError(_ADMM_REASON, "use feature_method EMA or KL")
    if feature not in ("EMA", "KL") or weight not in ("MAX_ABS", "ADMM"):
        raise ConfigError(
            f"bad MNN quantizer methods feature={feature!r} weight={weight!r}",
            "feature_method: EMA or KL; weight_method: MAX_ABS or ADMM",
        )
    if fmt not in ("RGB", "BGR") or len(mean) != 3 or len(normal) != 3:
        raise ConfigError(
            f"bad MNN preprocessing fmt={fmt!r} mean={list(mean)} normal={list(normal)}",
            "fmt is RGB or BGR; mean and normal have one value per channel",
        )
    if num < 1 or batch < 1 or (feature == "EMA" and num % batch):
        raise ConfigError(
            f"used_image_num={num} must be >= 1 and, for EMA, a multiple of batch_size={batch}",
            "MNN's EMA runs used_image_num // batch_size full batches and silently drops the rest",
        )


def _check_input_size(src: Path, width: int, height: int) -> None:
    shape = model_input_shape(src)
    if len(shape) == 4 and all(d > 0 for d in shape[2:]) and tuple(shape[2:]) != (height, width):
        raise ConfigError(
            f"{src.name} takes {shape[3]}x{shape[2]} inputs but width x height is {width}x{height}",
            "pass the model's own input size (EMA feeds the model its own shape)",
        )


def _run_quantizer(
    src: Path, tmp: Path, name: str, images: tuple[Path, ...], config: dict, timeout: float
) -> ToolLog:
    """Link exactly ``images`` into ``tmp/images``, write the config and run ``_tools.mnnquant``."""
    (tmp / "images").mkdir()
    for i, image in enumerate(images):  # MNN takes its first N in directory order: give it exactly N
        link = tmp / "images" / f"{i:05d}{image.suffix.lower()}"
        try:
            link.symlink_to(image.resolve())
        except OSError:
            shutil.copyfile(image, link)
    atomic_write_json(tmp / "quant.json", {**config, "path": str(tmp / "images") + "/"})
    log = run_tool(["mnnquant", str(src), str(tmp / name), str(tmp / "quant.json")], tmp, timeout)
    _raise_if_killed(log)
    marker = next((m for m in _QUANT_FAILURES if m in log.output), None)
    if marker == "input image error":  # cannot happen after calibration_images(), unless files changed
        raise CalibrationError(f"MNN could not read a calibration image:\n{log.tail()}", "re-export the set")
    if marker or log.returncode != 0 or not _nonempty(tmp / name):
        raise BuildError(
            f"MNN quantization failed ({marker or f'exit {log.returncode}, no model written'}):"
            f"\n{log.tail()}",
            "read the quantizer output above; check the config and the calibration images",
        )
    return log


def _publish(written: Path, dst: Path) -> Path | None:
    """Rename the model (and its side-car, if any) into place; return the side-car's final path."""
    os.replace(written, dst)
    sidecar, final = written.with_name(written.name + ".json"), dst.with_name(dst.name + ".json")
    if not sidecar.is_file():
        final.unlink(missing_ok=True)  # a stale side-car would describe another model
        return None
    os.replace(sidecar, final)
    return final
