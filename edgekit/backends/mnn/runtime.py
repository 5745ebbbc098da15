"""MNN's Python runtime for load checks and FP32 comparisons, with its stdout banners kept off stdout.

MNN's C++ code prints ``The device supports ...`` when ``MNN`` is imported and ``MNN use high precision``
whenever a runtime is made, straight to file descriptor 1. Everything here runs with fd 1 pointed at
stderr, so a caller that prints JSON on stdout stays parseable. Nothing imports ``MNN`` at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BuildError, ConfigError, MissingExtraError

TESTED_MNN_VERSION = "3.6.1"
INSTALL_HINT = f"install the extra: pip install 'edgekit[mnn]' (tested with MNN=={TESTED_MNN_VERSION})"


def mnn_version() -> str:
    """The installed MNN wheel's version, read from its metadata (no import, so no stdout banner).

    Raises:
        MissingExtraError: MNN is not installed.
    """
    try:
        return importlib.metadata.version("mnn")
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingExtraError("MNN is not installed", INSTALL_HINT) from exc


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr: MNN's C++ code prints its banners with ``printf``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # flush C stdio buffers before fd 1 points back at stdout
        os.dup2(saved, 1)
        os.close(saved)


def _import_mnn() -> Any:
    if importlib.util.find_spec("MNN") is None:
        raise MissingExtraError("MNN is not installed", INSTALL_HINT)
    with _stdout_to_stderr():
        import MNN
    return MNN


def model_input_shape(mnn_path: str | Path) -> list[int]:
    """The first input's shape as stored in the ``.mnn`` (``[1, 3, H, W]`` for edgekit's detectors)."""
    mnn = _import_mnn()
    with _stdout_to_stderr():
        try:
            interp = mnn.Interpreter(str(mnn_path))
            session = interp.createSession({"backend": "CPU", "numThread": 1})
            return list(interp.getSessionInput(session).getShape())
        except Exception as exc:  # the bindings raise bare Exception/SystemError on bad files
            raise BuildError(f"MNN cannot load {mnn_path}: {exc}", "re-run the conversion") from exc


def run_mnn(
    mnn_path: str | Path, x: np.ndarray, *, threads: int = 1, precision: str = "high"
) -> list[np.ndarray]:
    """Run a ``.mnn`` model once on the CPU (Module API) and return its outputs in model order.

    MNN prints banners to stdout from C++ (``The device supports ...`` at import, ``MNN use high
    precision`` per runtime). While this runs, file descriptor 1 points at stderr so a caller's stdout stays
    machine-readable; that is process-wide, so another thread's prints in that window go to stderr too.

    Args:
        mnn_path: The model.
        x: One NCHW float input, e.g. ``(1, 3, H, W)`` (cast to contiguous float32).
        threads: CPU threads.
        precision: ``high``, ``normal`` or ``low`` (``low`` means fp16 arithmetic only on ARMv8.2+).

    Returns:
        One float32 array per model output.

    Raises:
        ConfigError: Bad input rank, threads or precision.
        BuildError: MNN cannot load or run the model.

    Example:
        >>> run_mnn("det.mnn", np.zeros((1, 3, 64, 64), np.float32))[0].shape  # doctest: +SKIP
        (1, 1024, 8)
    """
    if np.ndim(x) != 4 or threads < 1 or precision not in ("high", "normal", "low"):
        raise ConfigError(
            f"bad run_mnn call: input rank {np.ndim(x)}, threads={threads}, precision={precision!r}",
            "pass one NCHW array, threads >= 1, precision high|normal|low",
        )
    mnn, arr = _import_mnn(), np.ascontiguousarray(x, dtype=np.float32)
    with _stdout_to_stderr():
        try:
            runtime = mnn.nn.create_runtime_manager(
                ({"backend": "CPU", "precision": precision, "numThread": int(threads)},)
            )
            net = mnn.nn.load_module_from_file(str(mnn_path), [], [], runtime_manager=runtime)
            outputs = net.forward([mnn.expr.const(arr, list(arr.shape), mnn.expr.NCHW)])
            return [_to_numpy(mnn, v) for v in (outputs if isinstance(outputs, list) else [outputs])]
        except Exception as exc:  # SystemError "returned a result with an exception set" on bad files
            raise BuildError(f"MNN cannot load or run {mnn_path}: {exc}", "re-run the conversion") from exc


def _to_numpy(mnn: Any, var: Any) -> np.ndarray:
    if var.data_format == mnn.expr.NC4HW4:
        var = mnn.expr.convert(var, mnn.expr.NCHW)
    return np.array(var.read(), dtype=np.float32, copy=True)


def check_outputs_sane(outputs: Sequence[np.ndarray], *, producer: str = "the model") -> None:
    """Refuse outputs that are all zero or not finite: MNN tools sometimes "succeed" like that.

    Args:
        outputs: What :func:`run_mnn` returned.
        producer: Who to blame in the message, e.g. ``"quantizer method ADMM"``.

    Raises:
        BuildError: No outputs, a non-finite value, or an output that is all zeros.
    """
    if not outputs:
        raise BuildError(f"{producer} produced no outputs", "check the model's outputs")
    for i, out in enumerate(outputs):
        if not np.isfinite(out).all():
            raise BuildError(f"{producer} produced NaN/inf in output {i}", "use another quantizer method")
        if not np.any(out):
            raise BuildError(f"{producer} produced zeros: output {i} is all zero", "use another method")
