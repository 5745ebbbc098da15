"""Write one calibration set in the form each quantizer wants.

A backend whose runtime reads calibration files declares where its writer is
(:attr:`edgekit.backends.contract.base.Backend.calibration_export`): a module with ``FORMAT`` (the
format's name), ``write(ctx, **options) -> dict`` and, optionally, ``METHOD_OPTION`` (the option
``--method`` sets), ``CLI_OPTIONS`` (flags of its own), ``cli_kwargs`` and ``cli_notes`` for
``edgekit calib export``.
This module holds what every format shares and finds the writers; it names no backend.

Every export holds ``images/`` (the letterboxed canvases at the input size, so a tool that resizes does
nothing), the tool-specific description, and ``calibration.json`` (set ref, spec, format, options). The
folder is built in a temp sibling and renamed into place only when complete.

Channel order: ``spec.mean``/``spec.std`` are indexed in the network's channel order (edgekit swaps to BGR
before normalising), which is also the order the runtimes' own calibration tools apply them in (their
``format`` / ``pixel`` settings), so the values are passed through without reordering.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.errors import CalibrationError, ConfigError, EdgekitError
from edgekit.core.files import atomic_dir, atomic_write_json
from edgekit.data.preprocess import PreprocessSpec, letterbox, load_image, to_tensor

if TYPE_CHECKING:
    from edgekit.calib.calibration_set import CalibrationSet


@dataclass
class ExportContext:
    """What every format writer gets: the set, the temp folder, the final folder and the canvases."""

    cs: CalibrationSet
    tmp: Path
    final: Path
    image_files: list[str]
    limit: int | None

    def tensors(self) -> Iterator[np.ndarray]:
        """Batch-1 tensors of the exported images, through the one preprocessing."""
        for canvas in canvases(self.cs, self.limit):
            yield to_tensor(canvas, self.cs.spec)

    def stacked(self) -> np.ndarray:
        """All tensors stacked along the batch axis, in the spec's layout."""
        return np.concatenate(list(self.tensors()))


def export(cs: CalibrationSet, fmt: str, out_dir: str | Path, **kw: Any) -> list[Path]:
    """Export ``cs`` for one quantizer into ``out_dir`` (created; must not exist unless ``overwrite=True``).

    Args:
        cs: A loaded calibration set (verified here first).
        fmt: A format of :func:`formats` (``edgekit calib export --help`` lists them).
        out_dir: Folder to create.
        **kw: ``limit`` (first N images), ``overwrite``, and the format's options (the parameters of its
            module's ``write``).

    Returns:
        Every file written, under the final ``out_dir``.

    Raises:
        ConfigError: Unknown format or option.
        CalibrationError: The set fails verification.

    Example:
        >>> export(CalibrationSet.load("shapes"), fmt, "out/calib")  # doctest: +SKIP
    """
    writer = exporter(fmt).write
    limit, overwrite = kw.pop("limit", None), kw.pop("overwrite", False)
    _check_options(fmt, writer, kw)
    cs.verify()
    out_dir = Path(out_dir)
    final = out_dir.resolve()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        ctx = ExportContext(cs, tmp, final, _write_canvases(cs, tmp, limit), limit)
        details = writer(ctx, **kw)
        info = {"set": cs.ref(), "format": fmt, "count": len(ctx.image_files), "spec": cs.spec.model_dump()}
        atomic_write_json(tmp / "calibration.json", {**info, **details})
    return sorted(final / p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


def formats() -> dict[str, ModuleType]:
    """Every calibration export format, by name: the modules the registered backends declare."""
    import importlib

    from edgekit.core.registry import BACKENDS

    found: dict[str, ModuleType] = {}
    for name in BACKENDS.names():
        try:
            module_name = BACKENDS.get(name).calibration_export
        except EdgekitError:  # a backend that cannot be imported here has no format to offer
            continue
        if module_name:
            module = importlib.import_module(module_name)
            found[module.FORMAT] = module
    return found


def exporter(fmt: str) -> ModuleType:
    """The writer module of format ``fmt``.

    Raises:
        ConfigError: No backend declares the format.
    """
    found = formats()
    if fmt not in found:
        raise ConfigError(f"unknown calibration export format {fmt!r}", f"use one of: {', '.join(found)}")
    return found[fmt]


def _check_options(fmt: str, writer: Callable, kw: dict) -> None:
    allowed = [n for n in inspect.signature(writer).parameters if n != "ctx"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the {fmt} export: {', '.join(unknown)}",
            f"{fmt} takes: {', '.join(allowed) or 'no options'} (plus limit, overwrite)",
        )


def canvases(cs: CalibrationSet, limit: int | None) -> Iterator[np.ndarray]:
    """The set's images letterboxed onto the input canvas (uint8 HWC, in manifest order)."""
    for path in cs.image_paths(limit):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*image converted to RGB")
            yield letterbox(load_image(path), cs.spec)[0]


def _write_canvases(cs: CalibrationSet, tmp: Path, limit: int | None) -> list[str]:
    from PIL import Image

    (tmp / "images").mkdir()
    names = []
    entries = cs.manifest.images if limit is None else cs.manifest.images[:limit]
    for i, (entry, canvas) in enumerate(zip(entries, canvases(cs, limit), strict=True)):
        name = f"images/{i:05d}_{entry.sha256[:12]}.png"
        Image.fromarray(canvas).save(tmp / name)
        names.append(name)
    return names


def tool_mean_norm(spec: PreprocessSpec) -> tuple[list[float], list[float]]:
    """``spec``'s normalisation for a tool that computes ``(src - mean) * norm`` on 0..255 pixels.

    edgekit computes ``(src/255 - mean) / std``; both index the channels in the model's channel order.
    """
    return [255.0 * m for m in spec.mean], [1.0 / (255.0 * s) for s in spec.std]


# --- activation ranges ----------------------------------------------------------------------------------


def activation_ranges(onnx_path: Path, arrays: list[np.ndarray], method: str = "minmax") -> dict:
    """Per-tensor ``(min, max)`` of every activation of an fp32 ONNX model over ``arrays``.

    Delegates to ``edgekit.quantize.ptq.tensor_ranges`` so that a runtime's calibration cache and a QDQ
    model come from one calibration code path (tensor names are kept: no graph optimisation).
    """
    from edgekit.quantize.ptq import tensor_ranges

    if not arrays:
        raise CalibrationError("no calibration tensors to compute ranges from", "the set or --limit is empty")
    if method not in RANGE_METHODS:
        raise ConfigError(f"unknown range method {method!r}", f"use one of: {', '.join(RANGE_METHODS)}")
    raw = tensor_ranges(onnx_path, arrays, method)
    return {name: (float(lo), float(hi)) for name, (lo, hi) in raw.items()}


RANGE_METHODS = ("minmax", "entropy", "percentile")


def dump_info(out_dir: str | Path) -> dict:
    """Read back an export's ``calibration.json``."""
    return json.loads((Path(out_dir) / "calibration.json").read_text())
