"""TensorFlow Lite Micro for microcontrollers (STM32H7/F7/F4): full-integer INT8 ``.tflite``, firmware bundle.

The second backend that owns its INT8 (``int8_source = "calibration"``): it takes the float model and the
calibration set, never a pre-quantized QDQ ONNX (fed to a TFLite converter, a QDQ graph converts to a
silently wrong model — research toolchains-b.md §2a).

Route: the torch model's raw prediction maps (``torch_program = "export-raw"``: a ``torch.export``
program, since a full-integer model cannot keep the decode's pixel boxes and probabilities in one int8
scale) go to litert-torch's PT2E quantizer in its own environment (``.venv-tflite``, made by ``make
tflite-env``; litert-torch pins jax and its own TFLite stack) through ``converters/litert_pt2e.py``:
int8 input and outputs, per-channel weights, NHWC input as a camera gives it. Then, before anything is
written: every op must have a TFLite Micro kernel (no Flex, no float tensors inside, no QUANTIZE to or
from float), the arena is measured in the ``tflite-micro`` interpreter (the reference kernels the
firmware runs), and flash and RAM must fit the board's limits. The artifact holds the ``.tflite``, the
firmware bundle (``firmware/``: C array, exact op resolver, settings, README) and the decode the runner
applies on the host side of the board.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit.backends.contract.base import (
    Artifact,
    Backend,
    BuildOptions,
    BuildOutput,
    BuildSource,
    Problem,
    QuantizerOptions,
)
from edgekit.backends.onnxruntime.backend import require_module, unknown_op_problems
from edgekit.backends.tflm.bundle import (
    RESOLVER_METHODS,
    BundleSpec,
    compile_model_data,
    write_bundle,
)
from edgekit.backends.tflm.io import bundle_notes, io_spec, tensor_info
from edgekit.core.errors import (
    BudgetExceededError,
    BuildError,
    MissingExtraError,
    ModelError,
    UnsupportedOpError,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
CONVERTER = Path(__file__).resolve().parent / "converters" / "litert_pt2e.py"
MODEL_FILE = "model.tflite"
#: A user ONNX's own decode (its graph after the prediction convs), run by the runner with ONNX Runtime.
TAIL_FILE = "decode_tail.onnx"
#: Flash the TFLite Micro runtime itself takes besides the model: interpreter, allocator and the
#: CMSIS-NN / reference kernels of a small CNN on Cortex-M7 at -Os. An estimate (not measured here:
#: no TFLM sources are available from this project's registries), stated wherever it is used.
RUNTIME_FLASH_KB = 100
#: RAM besides the arena: stack, interpreter object, application buffers (an estimate, stated).
RUNTIME_RAM_KB = 16
#: The arena is measured on a 64-bit host; 32-bit Cortex-M structs are smaller, activations identical.
#: The firmware gets the measurement + this margin, rounded up to 16 bytes.
ARENA_MARGIN = 0.05
TFLITE_ENV_HINT = "make tflite-env (creates .venv-tflite with litert-torch; ~2 GB, about a minute)"


class TflmQuant(QuantizerOptions):
    """How the full-integer model is quantized (recorded in ``artifact.json``).

    Attributes:
        method: Activation ranges: ``histogram`` = PT2E's HistogramObserver (litert's symmetric config;
            clips outliers), ``minmax`` = the full range the calibration set produced.
        per_channel: Per-output-channel weight scales.
        images: Calibration images to use (``None`` = the whole set).
        layout: The model's input layout on the MCU (``NHWC``: what a camera's buffer holds).
        split_outputs: Split each final prediction conv into channel groups of similar range (box sizes,
            box offsets, scores), each an int8 output with its own scale; the runner reassembles them.
    """

    method: Literal["histogram", "minmax"] = "histogram"
    per_channel: bool = True
    images: int | None = None
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    split_outputs: bool = True


class TflmBackend(Backend):
    """Build a full-integer INT8 TFLite Micro model and its firmware bundle from a torch detector.

    Example:
        >>> backend = TflmBackend()
        >>> art = backend.build("det.onnx", {"precision": "int8"}, "out/mcu", calib=cs,  # doctest: +SKIP
        ...                     torch_program="model_raw.pt2")
        >>> art.meta["tflm"]["ram_bytes"] <= 1024 * 1024  # doctest: +SKIP
        True
    """

    name = "tflm"
    precisions = ("int8",)
    build_location = "host"
    int8_source = "calibration"
    quantizer_options = TflmQuant
    torch_program = "export-raw"
    methods = ("histogram", "minmax")
    min_calibration_images = 8
    extra = "tflite"
    runner = "tflm_run.py"
    suffix = ".tflite"
    calibration_export = "edgekit.backends.tflm.calib_export"

    def _check(self, onnx_path: Path, model: Any, options: BuildOptions) -> list[Problem]:
        problems = unknown_op_problems(model)
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
            problems.append(
                Problem(
                    "error",
                    "TFLite Micro is built from the float model and a calibration set; this ONNX is already "
                    "quantized (QDQ), which TFLite converters turn into a silently wrong model",
                    "give the float model (edgekit deploy does)",
                )
            )
        return problems

    def _build(self, source: BuildSource, options: BuildOptions, work_dir: Path) -> BuildOutput:
        if source.torch_program is None:
            raise ModelError(
                "TFLite Micro is built from the model's raw prediction maps as a torch program; only an "
                "ONNX file was given to build()",
                "make the program first with edgekit.export.onnx_cut.raw_program_from_onnx(onnx, "
                "'raw.pt2', head) (edgekit deploy does this for --model file.onnx)",
            )
        decode = json.loads(
            source.torch_program.with_name(source.torch_program.stem + ".decode.json").read_text()
        )
        tail_files = {}
        if decode.get("kind") == "onnx-tail":
            # the ONNX's own decode, run by the runner on the dequantized maps (NCHW, as the ONNX has them)
            shutil.copyfile(source.torch_program.with_name(decode["tail"]), work_dir / TAIL_FILE)
            decode = {**decode, "tail": TAIL_FILE}
            tail_files = {"decode_tail": TAIL_FILE}
        quant: TflmQuant = options.quantizer  # type: ignore[assignment]
        with tempfile.TemporaryDirectory(prefix="edgekit-tflm-") as tmp:
            calib = _calibration_stack(source.calib, options, quant, Path(tmp) / "calib.npy")
            report = convert(source.torch_program, calib, work_dir / MODEL_FILE, quant, Path(tmp))
        ops = _check_ops(report)
        arena = measure_arena(work_dir / MODEL_FILE)
        io = io_spec(report, decode, quant.layout)
        budget = budget_for(report["bytes"], arena["firmware_bytes"], io, len(set(ops)))
        check_budget(budget, options)
        spec = BundleSpec(
            model=(work_dir / MODEL_FILE).read_bytes(),
            ops=ops,
            inputs=[tensor_info(io["input"])],
            outputs=[tensor_info(part) for o in io["outputs"] for part in o.get("parts", [o])],
            arena_bytes=arena["firmware_bytes"],
            class_names=list(options.class_names),
            head="raw maps, decoded by the application (see README)",
            notes=bundle_notes(arena, budget, decode, io),
        )
        bundle = write_bundle(spec, work_dir / "firmware")
        compiled = _compile(work_dir / "firmware", options)
        files = {
            "model": MODEL_FILE,
            **tail_files,
            **{role: f"firmware/{name}" for role, name in bundle.items()},
        }
        meta = {
            "payload_bytes": report["bytes"],  # the flashed model; firmware/ holds its C source
            "tflm": {
                **io,
                "decode": decode,
                "ops": dict(sorted(report["ops"].items())),
                "resolver": sorted({RESOLVER_METHODS[op] for op in ops}),
                "host_arena_bytes": arena["host_bytes"],
                "arena": arena,
                "budget": budget,
                "compiled": compiled,
                "converter": {"versions": report.get("versions"), "seconds": report.get("seconds")},
            },
        }
        return BuildOutput(files=files, meta=meta)

    def _load_check(self, artifact: Artifact) -> None:
        self._runtime(artifact)

    def _infer(self, artifact: Artifact, x: Any) -> list[Any]:
        return [self._runtime(artifact).infer(np.asarray(x, dtype=np.float32))]

    def _runtime(self, artifact: Artifact) -> Any:
        require_module("backend", self.name, "tflite_micro", self.extra)
        from edgekit.backends.tflm.tflm_run import TflmRuntime

        return TflmRuntime(artifact.meta, str(artifact.dir), None)

    def _tools(self) -> dict[str, str]:
        import importlib.metadata

        require_module("backend", self.name, "tflite_micro", self.extra)
        return {"tflite-micro": importlib.metadata.version("tflite-micro")}


# -- conversion -----------------------------------------------------------------------------------------
def converter_python() -> str:
    """The converter environment's interpreter (``EDGEKIT_TFLITE_PYTHON`` or ``.venv-tflite``).

    Raises:
        MissingExtraError: The environment does not exist; the hint says how to make it.
    """
    env = os.environ.get("EDGEKIT_TFLITE_PYTHON")
    path = Path(env) if env else REPO_ROOT / ".venv-tflite" / "bin" / "python"
    if not path.is_file():
        raise MissingExtraError(
            f"the TFLite converter environment is missing ({path} not found)", TFLITE_ENV_HINT
        )
    return str(path)


def convert(program: Path, calib: Path, out: Path, quant: TflmQuant, tmp: Path) -> dict[str, Any]:
    """Run the PT2E converter in its environment; return its report (raise on any refusal).

    Raises:
        UnsupportedOpError: The result is not full-integer (float tensors, Flex ops, QUANTIZE to float).
        BuildError: The converter failed (its error line is in the message).
    """
    report_path = tmp / "report.json"
    argv = [converter_python(), str(CONVERTER), "--program", str(program), "--calib", str(calib)]
    argv += ["--out", str(out), "--layout", quant.layout, "--report", str(report_path)]
    argv += ["--per-channel"] if quant.per_channel else []
    argv += ["--observer", quant.method]
    argv += ["--split-outputs"] if quant.split_outputs else []
    res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if res.returncode != 0:
        problems = report.get("problems") or []
        flex = report.get("flex_or_custom_ops") or []
        if flex or report.get("float_tensors") or report.get("quantize_dequantize"):
            names = (
                flex
                or sorted({str(q.get("op")) for q in report.get("quantize_dequantize") or []})
                or ["float"]
            )
            raise UnsupportedOpError(
                "tflm", names, "; ".join(problems)[:600] or "the graph is not full-integer"
            )
        tail = [ln for ln in res.stderr.splitlines() if ln.strip()][-3:]
        raise BuildError(
            f"the TFLite converter failed: {' | '.join(tail)[:800] or 'no output'}",
            "see the message; a decode head in the graph cannot be full-integer (export the raw maps)",
        )
    if not out.is_file():
        raise BuildError("the TFLite converter exited 0 without writing the model", "this is a converter bug")
    return report


def _calibration_stack(calib: Any, options: BuildOptions, quant: TflmQuant, path: Path) -> Path:
    from edgekit.quantize.calibrators import as_batch

    arrays = [as_batch(a) for a in calib.arrays(spec=options.preprocess)]
    if quant.images is not None:
        if quant.images > len(arrays):
            from edgekit.core.errors import CalibrationError

            raise CalibrationError(
                f"quantizer.images = {quant.images}, the calibration set has {len(arrays)}",
                "lower images or import a larger set",
            )
        arrays = arrays[: quant.images]
    np.save(path, np.concatenate(arrays, 0).astype(np.float32))
    return path


def _check_ops(report: dict[str, Any]) -> list[str]:
    ops = sorted(report.get("ops") or {})
    missing = [op for op in ops if op not in RESOLVER_METHODS]
    if missing:
        raise UnsupportedOpError(
            "tflm",
            missing,
            "TFLite Micro has no kernel for these ops: replace them in the model (e.g. a plain activation "
            "for an exotic one) or pick a target whose runtime has them",
        )
    return ops


# -- arena and budget -----------------------------------------------------------------------------------
def measure_arena(model: Path) -> dict[str, Any]:
    """The tensor arena the model needs, measured in the ``tflite-micro`` interpreter.

    Two ways that must agree: the RecordingMicroAllocator's total (printed on the C stderr only, so fd 2
    is captured) and a bisection of ``arena_size`` (allocate + invoke). Both are 64-bit host numbers; the
    firmware gets the larger plus :data:`ARENA_MARGIN`, rounded up to 16 bytes.
    """
    runtime = require_module("backend", "tflm", "tflite_micro", "tflite").runtime
    recorded = _recorded_arena(runtime, model)
    bisected = _bisect_arena(runtime, model, hi=max(recorded or 0, 4096) * 2)
    host = max(v for v in (recorded, bisected) if v)
    firmware = int(math.ceil(host * (1 + ARENA_MARGIN) / 16) * 16)
    return {
        "recorded_bytes": recorded,
        "bisected_bytes": bisected,
        "host_bytes": int(math.ceil(host / 16) * 16 + 64),
        "firmware_bytes": firmware,
        "margin": ARENA_MARGIN,
        "note": "measured on x86-64 (64-bit structs over-count a Cortex-M's); firmware +5 %, 16 B aligned",
    }


def _fits(runtime: Any, model: Path, size: int) -> bool:
    with _quiet_fd2():
        try:
            it = runtime.Interpreter.from_file(str(model), arena_size=int(size))
        except RuntimeError:
            return False
        details = it.get_input_details(0)
        it.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
        try:
            it.invoke()
        except RuntimeError:
            return False
    return True


def _bisect_arena(runtime: Any, model: Path, hi: int) -> int:
    lo = 0
    while not _fits(runtime, model, hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 30:
            raise BuildError(
                "TFLite Micro cannot allocate this model with a 1 GB arena", "the model is broken"
            )
    while hi - lo > 16:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fits(runtime, model, mid) else (mid, hi)
    return hi


def _recorded_arena(runtime: Any, model: Path) -> int | None:

    with tempfile.TemporaryFile(mode="w+b") as capture, _redirect_fd2(capture):
        try:
            it = runtime.Interpreter.from_file(
                str(model), intrepreter_config=runtime.InterpreterConfig.kAllocationRecording
            )
            it.print_allocations()
        except (RuntimeError, AttributeError):
            return None
        sys.stderr.flush()
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def _redirect_fd2(target: Any):
    saved = os.dup(2)
    try:
        os.dup2(target.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _quiet_fd2():
    with open(os.devnull, "wb") as null, _redirect_fd2(null):
        yield


def budget_for(model_bytes: int, arena_bytes: int, io: dict[str, Any], op_count: int) -> dict[str, Any]:
    """Flash = model + runtime estimate; RAM = arena (the I/O tensors live in it) + runtime estimate."""
    flash = model_bytes + RUNTIME_FLASH_KB * 1024
    ram = arena_bytes + RUNTIME_RAM_KB * 1024
    return {
        "flash_bytes": flash,
        "ram_bytes": ram,
        "model_bytes": model_bytes,
        "arena_bytes": arena_bytes,
        "runtime_flash_estimate_bytes": RUNTIME_FLASH_KB * 1024,
        "runtime_ram_estimate_bytes": RUNTIME_RAM_KB * 1024,
        "ops": op_count,
        "note": f"runtime figures are estimates (TFLM + kernels ~{RUNTIME_FLASH_KB} KB flash, "
        f"~{RUNTIME_RAM_KB} KB RAM besides the arena), not measured",
    }


def check_budget(budget: dict[str, Any], options: BuildOptions) -> None:
    """Refuse a model that does not fit the board, before anything is written.

    Raises:
        BudgetExceededError: Needed against available, for flash and/or RAM, and what to try.
    """
    limits = options.limits
    if limits is None:
        return
    over = []
    if limits.flash_kb and budget["flash_bytes"] > limits.flash_kb * 1024:
        over.append(f"flash {budget['flash_bytes'] / 1024:.0f} KB needed, {limits.flash_kb} KB available")
    if limits.ram_kb and budget["ram_bytes"] > limits.ram_kb * 1024:
        over.append(
            f"RAM {budget['ram_bytes'] / 1024:.0f} KB needed (arena {budget['arena_bytes'] / 1024:.0f} KB), "
            f"{limits.ram_kb} KB available"
        )
    if over:
        raise BudgetExceededError(
            "the model does not fit the board: " + "; ".join(over),
            "prune more (RECIPE=microyolo or progressive), use a smaller input_size (96 px needs ~1/3 of "
            "160 px's arena), or pick a board with more memory",
        )


def _compile(folder: Path, options: BuildOptions) -> dict[str, Any]:
    core = options.limits.core if options.limits else None
    if not core:
        return {"compiled": False, "reason": "the target names no MCU core (limits.core)"}
    try:
        return compile_model_data(folder, core)
    except ValueError as exc:
        from edgekit.core.errors import ConfigError

        raise ConfigError(str(exc), "set limits.core in the target YAML to one of those") from exc
    except RuntimeError as exc:
        raise BuildError(f"arm-none-eabi-g++ rejected model_data.cc: {exc}", "this is a bundle bug") from exc
