"""The backend contract: build options, the artifact sidecar, and the ``Backend`` build template.

A backend turns an ONNX file into an *artifact*: a folder with the runtime's model file(s) and an
``artifact.json`` sidecar the device-side runner reads (it never imports edgekit)::

    {"schema": 1, "backend": "onnxruntime", "precision": "fp32", "build_location": "host",
     "files": {"model": "model.onnx"}, "sha256": {"model.onnx": "..."},
     "input": {"name", "shape", "dtype", "layout"}, "preprocess": {PreprocessSpec},
     "output": {"name", "head", "shape", "num_classes", "class_names"},
     "quantization": {...}, "tools": {...}, "runtime": {"threads": null}, "runner": "ort_run.py"}

Adding a backend = one package ``edgekit/backends/<name>/`` holding a :class:`Backend` subclass (class
attributes + ``_check`` + ``_build`` + ``_load_check`` + ``_infer``), its tools and its device-side runner
``<name>_run.py`` (stdlib + the runtime + ``runcore.py``; never edgekit), a contract test subclassing
``tests/contract/backend_contract.py``, one line in :data:`edgekit.core.registry.BACKENDS`, a
``targets/<board>.yaml`` and its pip extra (OpenVINO was added this way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

# Re-exported: the artifact folder and its sidecar live in their own module.
from edgekit.backends.contract.artifact import ARTIFACT_JSON, SCHEMA_VERSION, Artifact  # noqa: E402, F401

# Re-exported: backends and callers import these from here.
from edgekit.backends.contract.onnx_io import (  # noqa: F401
    derive_preprocess,
    dims,
    generic_problems,
    graph_inputs,
    infer_num_classes,
    load_onnx,
    model_io,
)

# Re-exported: what to build is described in its own module.
from edgekit.backends.contract.options import (  # noqa: E402, F401
    BuildOptions,
    CalibrationRef,
    MemoryLimits,
    QuantizerOptions,
    UnparsedQuantizer,
)
from edgekit.backends.contract.parity import check_parity, detect_output_head, is_qdq
from edgekit.core.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    EdgekitError,
    ModelError,
    UnsupportedOpError,
)
from edgekit.core.files import atomic_dir, atomic_write_json, sha256_file
from edgekit.quantize.form import QdqForm


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
class BuildSource:
    """What a backend's ``_build`` hook builds from.

    Attributes:
        onnx: The FP32 ONNX (or, for ``int8_source = "qdq"`` at int8, the QDQ ONNX).
        calib: The loaded :class:`~edgekit.calib.CalibrationSet`, or ``None``; feed a quantizer with
            ``calib.arrays(spec=options.preprocess)`` (the model's preprocessing, not the set's).
        torch_program: The torch model in the form the backend's ``torch_program`` names, when edgekit
            holds the torch model: a TorchScript trace (pnnx converts it more faithfully than the ONNX),
            or a ``torch.export`` program of the raw head (TFLite's PT2E quantizer).
    """

    onnx: Path
    calib: Any = None
    torch_program: Path | None = None


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
class Parity:
    """How close a built artifact's outputs must stay to the FP32 model's on the same fixed inputs.

    Attributes:
        min_cosine: Lowest cosine similarity per output (flattened).
        max_rel_error: Highest ``max |got - ref| / max |ref|`` per output.
        min_part_cosine: Lowest cosine of a detector output's box columns and of its score columns,
            each on its own (box pixels dominate the whole-output cosine: zeroed scores still read ~0.97);
            with no detection on the check images, the lowest cosine of the active anchors' scores.
        min_kept: Lowest share of FP32's detections (score >= 0.25) the artifact must keep (same
            class, IoU >= 0.5; see :mod:`edgekit.backends.contract.agreement`).
        max_score_error: Highest mean ``|score - score_fp32|`` over the kept detections.
        raw_checked: Whether a detector's raw-output figures (cosine, maximum error, box and score
            cosines) can reject the build, or are only recorded (INT8: errors in background anchors no
            detection uses say nothing about the detections).
    """

    min_cosine: float
    max_rel_error: float
    min_part_cosine: float
    min_kept: float = 0.95
    max_score_error: float = 0.05
    raw_checked: bool = True

    def as_dict(self) -> dict[str, float | bool]:
        """The tolerance as recorded in ``artifact.json``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: Default tolerances per precision, the same on every backend. A detector is judged by its detections
#: at every precision (INT8: >= 95 % of FP32's kept, mean score error <= 0.05); at fp32 and fp16 the raw
#: outputs must also match (a converter computes the same thing or is wrong). FP16 weights round to 11
#: significant bits.
PARITY = {
    "fp32": Parity(0.99999, 1e-3, 0.9999, min_kept=0.99, max_score_error=0.005),
    "fp16": Parity(0.9999, 1e-2, 0.999, min_kept=0.98, max_score_error=0.01),
    "int8": Parity(0.98, 0.25, 0.95, min_kept=0.95, max_score_error=0.05, raw_checked=False),
}
#: The device's correctness guard when the device computes in fp16 and this host cannot (ncnn's fp16 on a
#: Cortex-A76): measured on the reference detector, ncnn fp16 arithmetic on the emulated A76 gave a scores
#: cosine of 0.9990 to the host's fp32 run of the same artifact (``bench/arm_boards.py``).
FP16_ARITHMETIC = Parity(0.999, 5e-2, 0.995, min_kept=0.95, max_score_error=0.02)
#: Check images (calibration images when a set is given): enough detections for a kept share to mean
#: something on real photographs, few enough for a fast build.
PARITY_INPUTS = 16


class Backend:
    """Base class of every backend: declare the class attributes, implement the hooks.

    Class attributes:
        name: Registry name.
        precisions: Precisions this backend can build.
        build_location: ``"host"``, or ``"device"`` when the runtime must build on the board itself
            (TensorRT engines are specific to the Jetson's GPU and TensorRT version).
        int8_source: Where INT8 comes from: ``"qdq"`` = a QDQ ONNX made by ``edgekit.quantize`` in
            the form :meth:`qdq_form` asks for (ONNX Runtime, TensorRT); ``"calibration"`` = the
            backend's own quantizer run in ``_build`` on the FP32 ONNX with the calibration set (MNN,
            ncnn, TFLite Micro). The pipeline and ``edgekit build`` branch on this attribute only.
        quantizer_options: The backend's :class:`QuantizerOptions` subclass.
        torch_program: The torch form ``_build`` takes when edgekit holds the torch model:
            ``"torchscript"`` (a trace, for pnnx), ``"export-raw"`` (a ``torch.export`` program returning
            the raw prediction maps, decoded by the runner), or ``None`` (the ONNX only).
        methods: Calibration methods ``--calibrator auto`` tries, best guess first.
        min_calibration_images: Fewest images the backend's quantizer accepts.
        fallback: Quantizer option updates ``edgekit build`` tries in turn (with each method) when no
            calibration method keeps FP32's detections, e.g. more of the head in float; QDQ backends
            instead keep their most sensitive layers in float.
        parity: Tolerance per precision of the post-build check against FP32.
        extra: Pip extra that installs the runtime (``None`` = ships with edgekit).
        runner: File name of the device-side runner, kept in the backend's package (the shared cores it
            imports, ``runcore.py`` and ``detcore.py``, are in ``edgekit/runners/``).
        runner_files: Other runner-side modules it imports (pushed beside it; ``runcore.py`` and
            ``detcore.py`` always are).
        suffix: Suffix of the main model file (``.onnx``, ``.engine``, ``.mnn``...).
        calibration_export: Module writing the calibration files the runtime's own tools read
            (``edgekit calib export``; see :mod:`edgekit.calib.exporters`), or ``None``.

    Device builds (``build_location = "device"``): on the host, :meth:`build` runs ``_build`` as a
    *staging* step: it writes what the device needs (e.g. ``model.onnx`` in the runtime's QDQ form)
    under the ``source`` role, with no ``model`` file yet, and ``output.meta["device_build"]``, a
    :class:`~edgekit.backends.contract.artifact.DeviceBuild` in state ``staged`` (``Artifact.device_build``
    reads it). The post-build check then runs on the host against the
    staged files through ``_load_check``/``_infer`` (for TensorRT: the staged QDQ ONNX in ONNX
    Runtime, which checks the QDQ form's accuracy). :meth:`edgekit.device.agent.Agent.build_on_device`
    pushes the staged artifact, runs the runner's ``--build`` mode on the board, fetches the result,
    completes the sidecar (``model`` file, hashes, the device's tool versions, ``state: built``) and
    runs the runner's ``--check`` mode there: the load check of a device build happens on the device.

    Example:
        >>> from edgekit.core.registry import get_backend
        >>> backend = get_backend("onnxruntime")
        >>> art = backend.build("model.onnx", BuildOptions(precision="fp32"), "out/ort")  # doctest: +SKIP
    """

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ()
    build_location: ClassVar[Literal["host", "device"]] = "host"
    int8_source: ClassVar[Literal["qdq", "calibration"]] = "qdq"
    quantizer_options: ClassVar[type[QuantizerOptions]] = QuantizerOptions
    torch_program: ClassVar[str | None] = None
    methods: ClassVar[tuple[str, ...]] = ()
    min_calibration_images: ClassVar[int] = 1
    fallback: ClassVar[tuple[dict[str, Any], ...]] = ()
    parity: ClassVar[dict[str, Parity]] = PARITY
    extra: ClassVar[str | None] = None
    #: pip distributions the runner imports on a board, runtime first (checked, and installed by
    #: ``edgekit board prepare``); empty for a backend a board does not get from pip (TensorRT, an MCU).
    board_packages: ClassVar[tuple[str, ...]] = ()
    #: True when the backend runs its build checks on the board of ``checks_on`` (see ``infer_checks``).
    checks_on_board: ClassVar[bool] = False
    runner: ClassVar[str] = ""
    runner_files: ClassVar[tuple[str, ...]] = ()
    suffix: ClassVar[str] = ""
    calibration_export: ClassVar[str | None] = None

    # -- public template -------------------------------------------------------------------------
    def check(self, onnx_path: str | Path, options: BuildOptions | dict | None = None) -> list[Problem]:
        """List what this backend cannot take in the model, before any build.

        Raises:
            ModelError: The file is missing, corrupt or truncated.
        """
        options = self.validate_options(options)
        model = load_onnx(onnx_path)
        return self._problems(Path(onnx_path), model, self._resolve_io(options, model))

    @classmethod
    def arithmetic(cls, meta: dict[str, Any], features: list[str] | None) -> str:
        """What arithmetic an artifact (its ``artifact.json``) runs on a CPU with ``features``.

        The default: INT8 layers in int8 and the rest in fp32 (a runtime that never computes in fp16).

        >>> Backend.arithmetic({"precision": "int8"}, ["asimd", "asimdhp"])
        'int8 (float layers fp32)'
        """
        return "int8 (float layers fp32)" if meta.get("precision") == "int8" else "fp32"

    @staticmethod
    def _with_floats(meta: dict[str, Any], floats: str) -> str:
        return f"int8 (float layers {floats})" if meta.get("precision") == "int8" else floats

    def qdq_form(self, cpu: dict | None, source: str = "not stated") -> QdqForm:
        """The QDQ layout this runtime needs on a device with ``cpu`` (``int8_source = "qdq"`` only)."""
        return QdqForm()

    def build(
        self,
        onnx_path: str | Path,
        options: BuildOptions | dict | None,
        out_dir: str | Path,
        *,
        calib: Any = None,
        reference: str | Path | None = None,
        torch_program: str | Path | None = None,
    ) -> Artifact:
        """Build an artifact folder at ``out_dir``; on any failure no ``out_dir`` is left behind.

        Validates the options, checks the model, calls ``_build`` in a temp sibling folder, writes
        ``artifact.json`` with hashes, then checks the result: the runtime loads it, and its outputs
        on fixed inputs match the FP32 model within :attr:`parity` (recorded in the sidecar).

        Args:
            onnx_path: The FP32 ONNX, or for ``int8_source = "qdq"`` at int8 the QDQ ONNX.
            options: :class:`BuildOptions` (or a dict of them).
            out_dir: The artifact folder to create.
            calib: The loaded :class:`~edgekit.calib.CalibrationSet`; required for an INT8 build of a
                backend that quantizes itself, and the source of the parity check's inputs.
            reference: FP32 ONNX to check against (default: ``onnx_path`` unless it is a QDQ model).
            torch_program: The same model in the backend's ``torch_program`` form, if it takes one.

        Raises:
            ConfigError: Unsupported precision or invalid options.
            CalibrationError: INT8 of a self-quantizing backend without a (large enough) set.
            ModelError: Missing, corrupt or truncated ONNX.
            UnsupportedOpError: The model uses ops this runtime cannot run.
            BuildError: The tool failed, the runtime cannot load what it produced, or its outputs
                diverge from FP32 (the message names the output and what to try).
        """
        options = self.validate_options(options)
        onnx_path = Path(onnx_path)
        model = load_onnx(onnx_path)
        options = self._resolve_io(options, model)
        raise_for_problems(self.name, self._problems(onnx_path, model, options))
        options = self._with_calibration(options, calib)
        reference = Path(reference) if reference else None if is_qdq(model) else onnx_path
        with atomic_dir(out_dir) as work:
            ts = Path(torch_program) if torch_program and self.torch_program else None
            output = self._build(BuildSource(onnx_path, calib, ts), options, work)
            meta = self._sidecar(model, options, output)
            self._write_sidecar(work, meta)
            self._postcondition(work, reference, calib)
        return Artifact.load(out_dir)

    def validate_options(self, options: BuildOptions | dict | None) -> BuildOptions:
        """Parse ``options`` (the quantizer into this backend's own model) and check the precision.

        Raises:
            ConfigError: Unknown keys, bad values or an unsupported precision.
        """
        data = options.model_dump() if isinstance(options, BuildOptions) else dict(options or {})
        quantizer = data.pop("quantizer", None)
        what, model = "build options", BuildOptions
        try:
            options = BuildOptions.model_validate(data)
            if quantizer is not None:
                what, model = f"quantizer options ({self.quantizer_options.__name__})", self.quantizer_options
                options.quantizer = self.quantizer_options.model_validate(quantizer)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '-'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ConfigError(
                f"invalid {what} for backend '{self.name}': {problems}",
                f"see {model.__name__} for the fields and their values",
            ) from exc
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

    def infer(self, artifact: Artifact, x: Any) -> list[Any]:
        """Run the artifact on this host on one batch-1 float32 input; return its outputs (batch dim kept)."""
        return self._infer(artifact, x)

    def infer_checks(self, artifact: Artifact, xs: list[Any]) -> list[list[Any]]:
        """The artifact's outputs for the build's check inputs, where its checks run.

        On this host by default; a backend whose host kernels cannot be trusted runs them on the board of
        :func:`~edgekit.backends.contract.board_check.checks_on` when one is set.
        """
        return [self.infer(artifact, x) for x in xs]

    # -- hooks for subclasses ----------------------------------------------------------------------
    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        """Return runtime-specific problems (ops, types, sizes); ``model`` is the loaded ModelProto."""
        return []

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        """Write the runtime's files into ``work_dir`` and say which is which (see :class:`BuildSource`)."""
        raise NotImplementedError

    def _load_check(self, artifact: Artifact) -> None:
        """Load the artifact in the runtime (raise anything on failure)."""
        raise NotImplementedError

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        """Run one input through the artifact on this host (for the parity check)."""
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

    def _resolve_io(self, options: BuildOptions, model: Any) -> BuildOptions:
        """Fill the head (from the output shape) and the preprocessing (from the input shape) if unset."""
        if options.head and options.preprocess:
            return options
        inputs = graph_inputs(model)
        if len(inputs) != 1 or not model.graph.output:
            return options  # generic_problems names this
        try:
            spec = options.preprocess or derive_preprocess(dims(inputs[0]))
        except ConfigError:
            spec = None  # a non-image input: the build's own checks name it
        head = options.head or detect_output_head(model)
        return options.model_copy(update={"preprocess": spec, "head": head})

    def _with_calibration(self, options: BuildOptions, calib: Any) -> BuildOptions:
        """For a self-quantizing INT8 build, require the set; record the set and the spec applied."""
        spec = options.preprocess
        update: dict[str, Any] = {}
        own_int8 = options.precision == "int8" and self.int8_source == "calibration"
        if own_int8:
            if calib is None:
                raise CalibrationError(
                    f"backend '{self.name}' quantizes INT8 itself and needs a calibration set",
                    "give --calib NAME (see `edgekit calib list`)",
                )
            if calib.count < self.min_calibration_images:
                raise CalibrationError(
                    f"calibration set {calib.name!r} has {calib.count} images; backend '{self.name}' "
                    f"needs at least {self.min_calibration_images}",
                    "import a larger set with `edgekit calib import`",
                )
            quantizer = update["quantizer"] = options.quantizer or self.quantizer_options()
            images = getattr(quantizer, "images", None)
            if images is not None and images > calib.count:
                raise CalibrationError(
                    f"quantizer images={images} but calibration set {calib.name!r} has {calib.count}",
                    "lower images, or import a larger set with `edgekit calib import`",
                )
        if calib is not None and (own_int8 or options.calibration is None) and options.precision == "int8":
            update["calibration"] = CalibrationRef(**calib.ref(), spec=spec)
        return options.model_copy(update=update)

    def _sidecar(self, model: Any, options: BuildOptions, output: BuildOutput) -> dict[str, Any]:
        io = model_io(model, options)
        quantizer = options.quantizer.model_dump(mode="json") if options.quantizer else None
        meta: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "backend": self.name,
            "precision": options.precision,
            "build_location": self.build_location,
            "files": dict(output.files),
            "sha256": {},
            **io,
            "int8_source": self.int8_source if options.precision == "int8" else None,
            "calibration": options.calibration.model_dump(mode="json") if options.calibration else None,
            "quantization": quantizer,
            "tools": self._tools(),
            "runtime": {"threads": options.threads},
            "runner": self.runner,
            "runner_files": list(self.runner_files),
        }
        runtime = {**meta["runtime"], **output.meta.get("runtime", {})}  # merged: the backend adds keys
        meta.update(output.meta)
        meta["runtime"] = runtime
        return meta

    def _write_sidecar(self, work: Path, meta: dict[str, Any]) -> None:
        role = "source" if self.build_location == "device" else "model"
        if role not in meta["files"]:
            raise BuildError(f"backend '{self.name}' produced no '{role}' file", "this is a backend bug")
        for rel in meta["files"].values():
            path = work / rel
            if not path.is_file() or path.stat().st_size == 0:
                raise BuildError(
                    f"backend '{self.name}' did not produce a non-empty {rel}", "see the tool log"
                )
            meta["sha256"][rel] = sha256_file(path)
        atomic_write_json(work / ARTIFACT_JSON, meta)

    def _postcondition(self, work: Path, reference: Path | None, calib: Any) -> None:
        artifact = Artifact.load(work)
        self.load_check(artifact)
        parity = check_parity(self, artifact, reference, calib)
        meta = dict(artifact.meta, parity=parity)
        atomic_write_json(work / ARTIFACT_JSON, meta)


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
