"""Name -> ``"module:Class"`` tables, imported only when a name is used.

``import edgekit`` stays light because nothing here imports a runtime: a registry entry is a string
until :meth:`Registry.get` resolves it. A missing optional runtime becomes a
:class:`~edgekit.core.errors.MissingExtraError` naming the pip extra; an entry whose module is not part of
this version of edgekit yet says so instead of crashing.

Adding a backend is one line in :data:`BACKENDS` (plus its module, runner, contract test and target
YAML; see ``edgekit/backends/contract/base.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Generic, NamedTuple, TypeVar

from edgekit.core.errors import ConfigError, EdgekitError, MissingExtraError

T = TypeVar("T")

#: Status strings returned by :meth:`Registry.available`.
READY, MISSING_EXTRA, NOT_BUILT = "ready", "missing extra", "not built yet"


class Entry(NamedTuple):
    """One row of :meth:`Registry.available`.

    Attributes:
        name: Registry name (what targets and the CLI use).
        status: ``"ready"``, ``"missing extra"`` or ``"not built yet"``.
        extra: Pip extra that provides the runtime, or ``None`` when it ships with edgekit.
    """

    name: str
    status: str
    extra: str | None


class Registry(Generic[T]):
    """Lazy table of plug-ins of one kind.

    Args:
        kind: What the entries are (``"backend"``, ``"power sampler"``...), used in messages.
        table: Name -> ``"package.module:ClassName"``.
        extras: Name -> pip extra providing that plug-in's runtime (absent = no extra needed).
        runtimes: Name -> top-level module of the runtime, probed by :meth:`available` without
            importing it (absent = nothing to probe).
        hint: Suggestion appended when a name is not built yet.

    Example:
        >>> reg = Registry("backend", {"onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend"})
        >>> reg.names()
        ['onnxruntime']
    """

    def __init__(
        self,
        kind: str,
        table: dict[str, str],
        extras: dict[str, str] | None = None,
        runtimes: dict[str, str] | None = None,
        hint: str = "",
    ) -> None:
        self.kind = kind
        self.table = dict(table)
        self.extras = dict(extras or {})
        self.runtimes = dict(runtimes or {})
        self.hint = hint

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self.table)

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def get(self, name: str) -> type[T]:
        """Import and return the class registered under ``name``.

        Raises:
            ConfigError: ``name`` is not registered (the message lists the known names).
            MissingExtraError: The plug-in's runtime is not installed (names the pip extra).
            EdgekitError: The plug-in is registered but not part of this version of edgekit.
        """
        if name not in self.table:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}",
                f"use one of: {', '.join(self.names())}",
            )
        module_name, _, attr = self.table[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self._import_error(name, module_name, exc) from exc
        try:
            return getattr(module, attr)
        except AttributeError as exc:
            raise self._not_built(name) from exc

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Return ``get(name)(*args, **kwargs)``."""
        return self.get(name)(*args, **kwargs)

    def available(self) -> list[Entry]:
        """Return ``(name, status, extra)`` for every entry without importing any runtime."""
        return [Entry(name, self._status(name), self.extras.get(name)) for name in self.names()]

    def _status(self, name: str) -> str:
        module_name = self.table[name].partition(":")[0]
        if not _module_exists(module_name):
            return NOT_BUILT
        runtime = self.runtimes.get(name)
        if runtime and not _module_exists(runtime):
            return MISSING_EXTRA
        return READY

    def _import_error(self, name: str, module_name: str, exc: ImportError) -> EdgekitError:
        # The plug-in's own module missing means "not written yet"; anything else is its runtime.
        missing = getattr(exc, "name", None) or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            return self._not_built(name)
        return missing_extra(self.kind, name, missing or str(exc), self.extras.get(name))

    def _not_built(self, name: str) -> EdgekitError:
        return EdgekitError(f"{self.kind} '{name}' is not built yet in this version of edgekit", self.hint)


def missing_extra(kind: str, name: str, module: str, extra: str | None) -> MissingExtraError:
    """Build the error for a runtime module that is not installed.

    Args:
        kind: Plug-in kind, e.g. ``"backend"``.
        name: Registry name of the plug-in.
        module: The module that failed to import.
        extra: Pip extra that installs it, if any.
    """
    fix = f"pip install 'edgekit[{extra}]'" if extra else f"install the Python package providing '{module}'"
    return MissingExtraError(f"{kind} '{name}' needs '{module}', which is not installed", fix)


def require_module(kind: str, name: str, module: str, extra: str | None) -> Any:
    """Import a runtime inside a plug-in, turning ImportError into :class:`MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(kind, name, module, extra) from exc


def _module_exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


BACKENDS: Registry[Any] = Registry(
    "backend",
    {
        "onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend",
        "tensorrt": "edgekit.backends.tensorrt:TensorRTBackend",
        "mnn": "edgekit.backends.mnn:MnnBackend",
        "ncnn": "edgekit.backends.ncnn:NcnnBackend",
        "tflm": "edgekit.backends.tflm:TflmBackend",
        "openvino": "edgekit.backends.openvino:OpenVinoBackend",
    },
    extras={"mnn": "mnn", "ncnn": "ncnn", "tflm": "tflite", "openvino": "openvino"},
    runtimes={
        "onnxruntime": "onnxruntime",
        "mnn": "MNN",
        "ncnn": "ncnn",
        "tflm": "tflite_micro",
        "openvino": "openvino",
    },
    hint="use a target `edgekit targets` lists, or a target YAML with a backend `edgekit doctor` lists",
)
"""Every backend edgekit knows; TensorRT has no extra because it is built on the Jetson itself."""

#: The pip distribution of each backend whose runtime an emulated ARM Linux board carries (the
#: ``--device sim`` boards' root file system, :mod:`edgekit.device.sim.rootfs`).
BOARD_PACKAGES = {"onnxruntime": "onnxruntime", "ncnn": "ncnn", "mnn": "MNN"}


def get_backend(name: str) -> Any:
    """Return an instance of the backend registered under ``name`` (see :data:`BACKENDS`)."""
    return BACKENDS.create(name)
