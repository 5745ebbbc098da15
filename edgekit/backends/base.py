"""The backend contract: build options, the artifact sidecar, and the ``Backend`` build template.

A backend turns an ONNX file into an *artifact*: a folder with the runtime's model file(s) and an
``artifact.json`` sidecar the device-side runner reads (it never imports edgekit)::

    {"schema": 1, "backend": "onnxruntime", "precision": "fp32", "build_location": "host",
     "files": {"model": "model.onnx"}, "sha256": {"model.onnx": "..."},
     "input": {"name", "shape", "dtype", "layout"}, "preprocess": {PreprocessSpec},
     "output": {"name", "head", "shape", "num_classes", "class_names"},
     "quantization": {...}, "tools": {...}, "runtime": {"threads": null}, "runner": "ort_run.py"}

Adding a backend (TensorRT, MNN, ncnn, TFLite Micro) = subclass :class:`Backend` in
``edgekit/backends/<name>.py`` (class attributes + ``_check`` + ``_build`` + ``_load_check``), a runner
``edgekit/runners/<name>_run.py``, a contract test subclassing ``tests/contract/backend_contract.py``,
one line in :data:`edgekit.registry.BACKENDS` and a ``targets/<board>.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Re-exported: backends and callers import these from here.
from edgekit.backends.onnx_io import (  # noqa: F401
    derive_preprocess,
    dims,
    generic_problems,
    graph_inputs,
    infer_num_classes,
    load_onnx,
    model_io,
)
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BuildError, ConfigError, EdgekitError, ModelError, UnsupportedOpError
from edgekit.fsutil import atomic_dir, atomic_write_json, sha256_file

ARTIFACT_JSON = "artifact.json"
SCHEMA_VERSION = 1


class BuildOptions(BaseModel):
    """What to build: precision, runtime options and the detector's I/O conventions.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (each backend lists what it supports).
        threads: Intra-op threads the runner uses; ``None`` = runtime default.
        head: Output layout, ``yolov5`` ``[1, N, 5+nc]`` or ``yolov8`` ``[1, 4+nc, N]``.
        num_classes: Classes in the output; ``None`` = read from a static output shape.
        class_names: Optional names, one per class.
        preprocess: How images become inputs; ``None`` = derived from the ONNX input shape.
        quantization: Free-form record of how an int8 model was made (calibrator, calibration set
            ``{name, version, sha256}``, excluded nodes, scales hash); copied into ``artifact.json``.
    """

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    threads: int | None = Field(None, ge=1, le=256)
    head: Literal["yolov5", "yolov8"] = "yolov5"
    num_classes: int | None = Field(None, ge=1)
    class_names: list[str] = Field(default_factory=list)
    preprocess: PreprocessSpec | None = None
    quantization: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_match_classes(self) -> BuildOptions:
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names given for num_classes={self.num_classes}")
        return self


@dataclass(frozen=True)
class Problem:
    """Something a runtime cannot take, found before building.

    Attributes:
        severity: ``"error"`` stops the build; ``"warning"`` is reported only.
        message: What is wrong, naming ops / nodes / shapes.
        hint: What to change.
        ops: Op types involved (an error with ops becomes :class:`UnsupportedOpError`).
    """

    severity: Literal["error", "warning"]
    message: str
    hint: str = ""
    ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildOutput:
    """What a backend's ``_build`` hook produced inside the work folder.

    Attributes:
        files: Role -> path relative to the work folder; the ``"model"`` role is required.
        meta: Keys merged over the generic ``artifact.json`` content (e.g. a renamed input).
    """

    files: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A built model folder and its verified ``artifact.json``.

    Attributes:
        dir: The artifact folder.
        backend: Registry name of the backend that built it.
        precision: ``fp32`` / ``fp16`` / ``int8``.
        files: Role -> relative path (``{"model": "model.onnx"}``).
        meta: The whole ``artifact.json``.
    """

    dir: Path
    backend: str
    precision: str
    files: dict[str, str]
    meta: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> Artifact:
        """Read ``artifact.json`` from ``directory`` and re-check the sha256 of every listed file.

        Raises:
            ModelError: The sidecar is missing or unreadable, or a file is missing or changed.

        Example:
            >>> art = Artifact.load("runs/x/build")  # doctest: +SKIP
            >>> art.path("model"), art.meta["input"]["shape"]  # doctest: +SKIP
        """
        directory = Path(directory)
        meta = _read_sidecar(directory)
        for rel, digest in meta["sha256"].items():
            _verify_file(directory, rel, digest)
        return cls(directory, meta["backend"], meta["precision"], dict(meta["files"]), meta)

    def path(self, role: str = "model") -> Path:
        """Return the absolute path of the file with ``role``."""
        if role not in self.files:
            raise ModelError(f"artifact {self.dir} has no '{role}' file", f"it lists: {sorted(self.files)}")
        return self.dir / self.files[role]

    def all_files(self) -> list[str]:
        """Return every file (relative path) the artifact consists of, sidecar included."""
        return [*self.meta["sha256"], ARTIFACT_JSON]

    @property
    def preprocess(self) -> PreprocessSpec:
        """The preprocessing the model expects."""
        return PreprocessSpec(**self.meta["preprocess"])

    @property
    def runner(self) -> str:
        """File name of the device-side runner in ``edgekit/runners/``."""
        return self.meta["runner"]


_REQUIRED_KEYS = ("schema", "backend", "precision", "files", "sha256", "input", "output", "runner")


def _read_sidecar(directory: Path) -> dict[str, Any]:
    sidecar = directory / ARTIFACT_JSON
    if not sidecar.is_file():
        raise ModelError(
            f"{directory} is not an artifact: no {ARTIFACT_JSON}", "build one with `edgekit build`"
        )
    try:
        meta = json.loads(sidecar.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{sidecar} is not valid JSON: {exc}", "rebuild the artifact") from exc
    missing = [k for k in _REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing or meta["schema"] != SCHEMA_VERSION:
        raise ModelError(
            f"{sidecar} is not an edgekit schema-{SCHEMA_VERSION} sidecar (missing: {', '.join(missing)})",
            "rebuild the artifact with this version of edgekit",
        )
    unhashed = sorted(set(meta["files"].values()) - set(meta["sha256"]))
    if unhashed:
        raise ModelError(f"{sidecar} lists files without a sha256: {unhashed}", "rebuild the artifact")
    return meta


def _verify_file(directory: Path, rel: str, digest: str) -> None:
    path = directory / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelError(
            f"{directory / ARTIFACT_JSON} lists a file outside the artifact: {rel}", "rebuild it"
        )
    if not path.is_file():
        raise ModelError(f"artifact file {path} is missing", "rebuild the artifact")
    if sha256_file(path) != digest:
        raise ModelError(
            f"artifact file {path} changed since it was built (sha256 mismatch)",
            "rebuild the artifact; never edit files inside an artifact folder",
        )


class Backend:
    """Base class of every backend: declare the class attributes, implement the three hooks.

    Class attributes:
        name: Registry name.
        precisions: Precisions this backend can build.
        build_location: ``"host"``, or ``"device"`` when the runtime must build on the board itself
            (TensorRT engines are specific to the Jetson's GPU and TensorRT version).
        extra: Pip extra that installs the runtime (``None`` = ships with edgekit).
        runner: File name of the device-side runner in ``edgekit/runners/``.
        suffix: Suffix of the main model file (``.onnx``, ``.engine``, ``.mnn``...).

    Device builds (the documented hook for ``build_location = "device"``): on the host ``build()``
    will only stage ``model.onnx`` with an ``artifact.json`` whose ``build_location`` is ``"device"``
    and ``files`` is ``{"onnx": "model.onnx"}``; the agent pushes it, runs the runner's build mode on
    the board, fetches the engine and completes the sidecar (hashes included). Not built yet: such a
    backend's ``build()`` raises a clear :class:`EdgekitError` for now.

    Example:
        >>> from edgekit.registry import get_backend
        >>> backend = get_backend("onnxruntime")
        >>> art = backend.build("model.onnx", BuildOptions(precision="fp32"), "out/ort")  # doctest: +SKIP
    """

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ()
    build_location: ClassVar[Literal["host", "device"]] = "host"
    extra: ClassVar[str | None] = None
    runner: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    # -- public template -------------------------------------------------------------------------
    def check(self, onnx_path: str | Path, options: BuildOptions | dict | None = None) -> list[Problem]:
        """List what this backend cannot take in the model, before any build.

        Raises:
            ModelError: The file is missing, corrupt or truncated.
        """
        options = self.validate_options(options)
        return self._problems(Path(onnx_path), load_onnx(onnx_path), options)

    def build(
        self, onnx_path: str | Path, options: BuildOptions | dict | None, out_dir: str | Path
    ) -> Artifact:
        """Build an artifact folder at ``out_dir``; on any failure no ``out_dir`` is left behind.

        Validates the options, checks the model, calls ``_build`` in a temp sibling folder, writes
        ``artifact.json`` with hashes, then checks the result: files exist and are non-empty and the
        runtime really loads the model.

        Raises:
            ConfigError: Unsupported precision or invalid options.
            ModelError: Missing, corrupt or truncated ONNX.
            UnsupportedOpError: The model uses ops this runtime cannot run.
            BuildError: The tool failed or the runtime cannot load what it produced.
        """
        options = self.validate_options(options)
        onnx_path = Path(onnx_path)
        model = load_onnx(onnx_path)
        raise_for_problems(self.name, self._problems(onnx_path, model, options))
        if self.build_location == "device":
            raise EdgekitError(
                f"backend '{self.name}' builds on the device; device builds are not built yet in this "
                "version of edgekit",
                "use target 'local' (or --device local) with backend 'onnxruntime'",
            )
        with atomic_dir(out_dir) as work:
            output = self._build(onnx_path, options, work)
            meta = self._sidecar(model, options, output)
            self._write_sidecar(work, meta)
            self._postcondition(work)
        return Artifact.load(out_dir)

    def validate_options(self, options: BuildOptions | dict | None) -> BuildOptions:
        """Parse ``options`` and check this backend supports the precision.

        Raises:
            ConfigError: Unknown keys, bad values or an unsupported precision.
        """
        if not isinstance(options, BuildOptions):
            try:
                options = BuildOptions.model_validate(options or {})
            except ValidationError as exc:
                raise ConfigError(f"invalid build options: {exc}", "see BuildOptions for the fields") from exc
        if options.precision not in self.precisions:
            raise ConfigError(
                f"backend '{self.name}' cannot build precision '{options.precision}'",
                f"use one of: {', '.join(self.precisions)}",
            )
        return options

    def load_check(self, artifact: Artifact) -> None:
        """Load the artifact in this host's runtime; raise :class:`BuildError` if it cannot."""
        try:
            self._load_check(artifact)
        except EdgekitError:
            raise
        except Exception as exc:  # runtimes raise their own exception types
            raise BuildError(
                f"{self.name} cannot load the built artifact {artifact.dir}: {str(exc).strip()[-500:]}",
                "the model may use something this runtime version cannot run; check `edgekit doctor`",
            ) from exc

    # -- hooks for subclasses ----------------------------------------------------------------------
    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        """Return runtime-specific problems (ops, types, sizes); ``model`` is the loaded ModelProto."""
        return []

    def _build(self, onnx_path: Path, options: BuildOptions, work_dir: Path) -> BuildOutput:
        """Write the runtime's files into ``work_dir`` and say which is which."""
        raise NotImplementedError

    def _load_check(self, artifact: Artifact) -> None:
        """Load the artifact in the runtime (raise anything on failure)."""
        raise NotImplementedError

    def _tools(self) -> dict[str, str]:
        """Versions of the tools that produced the artifact."""
        return {}

    # -- internals ---------------------------------------------------------------------------------
    def _problems(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        problems = generic_problems(model, options)
        if any(p.severity == "error" for p in problems):
            return problems
        return problems + list(self._check(onnx_path, model, options))

    def _sidecar(self, model: Any, options: BuildOptions, output: BuildOutput) -> dict[str, Any]:
        io = model_io(model, options)
        meta: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "backend": self.name,
            "precision": options.precision,
            "build_location": self.build_location,
            "files": dict(output.files),
            "sha256": {},
            **io,
            "quantization": dict(options.quantization),
            "tools": self._tools(),
            "runtime": {"threads": options.threads},
            "runner": self.runner,
        }
        meta.update(output.meta)
        return meta

    def _write_sidecar(self, work: Path, meta: dict[str, Any]) -> None:
        if "model" not in meta["files"]:
            raise BuildError(f"backend '{self.name}' produced no 'model' file", "this is a backend bug")
        for rel in meta["files"].values():
            path = work / rel
            if not path.is_file() or path.stat().st_size == 0:
                raise BuildError(
                    f"backend '{self.name}' did not produce a non-empty {rel}", "see the tool log"
                )
            meta["sha256"][rel] = sha256_file(path)
        atomic_write_json(work / ARTIFACT_JSON, meta)

    def _postcondition(self, work: Path) -> None:
        self.load_check(Artifact.load(work))


def raise_for_problems(backend: str, problems: list[Problem]) -> None:
    """Raise the error matching the first error-severity problems, if any.

    Raises:
        UnsupportedOpError: When error problems name ops.
        ModelError: For other error problems.
    """
    errors = [p for p in problems if p.severity == "error"]
    ops = [op for p in errors for op in p.ops]
    if ops:
        raise UnsupportedOpError(backend, ops, next((p.hint for p in errors if p.ops and p.hint), ""))
    if errors:
        raise ModelError("; ".join(p.message for p in errors), errors[0].hint)
