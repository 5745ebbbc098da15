"""Calibration for ONNX Runtime quantization: arrays -> ORT data reader -> per-tensor ranges.

Why the calibrators are driven by hand: ``quantize_static`` forwards only a few ``Calib*`` keys of
``extra_options`` to ORT's calibrator and silently drops the histogram sizes. The Entropy calibrator
then runs with ``num_bins == num_quantized_bins == 128``: its KL search over thresholds
``range(num_quantized_bins // 2, num_bins // 2 + 1)`` has exactly one candidate, the full histogram,
which is then clipped to the observed (min, max) -- i.e. MinMax, byte for byte (ORT 1.32,
``calibrate.py: HistogramCollector.get_entropy_threshold``). So edgekit builds the calibrator itself
(``create_calibrator`` with the settings in ``_CALIBRATOR_OPTIONS``), writes ORT's calibration cache
(:func:`calibration_cache`), and ``quantize_static`` reads the ranges from that cache.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import CalibrationError, ConfigError
from edgekit.quantize import graph as qgraph

# Conv/ConvTranspose/Gemm/MatMul hold the weights and the FLOPs, so INT8 pays off there. Relu/Clip
# are listed so ORT folds them into the producer's output quantization (a UINT8 tensor with zero
# point 0 *is* a ReLU): the conv output then spends all 256 levels on [0, max] instead of half on
# negatives that ReLU throws away. MaxPool and Resize are exact in INT8 and reuse their input's
# scale, so INT8 tensors flow through the neck without a float round trip at no accuracy cost.
# Deliberately NOT quantized: Sigmoid/Mul (a SiLU quantized as two ops collapsed YOLOv5 in
# TensorRT, research §1.2 Q2) and Add/Concat (inputs with different ranges force a requantize).
OP_TYPES_TO_QUANTIZE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "Resize")
METHODS = ("minmax", "entropy", "percentile")

# Entropy: 1024 bins give the KL search ~380 thresholds to choose from (ORT's search is a pure-Python
# loop: ~0.3 s per tensor here, 2048 bins would cost ~1.5 s); 256 quantized bins = the 8-bit levels
# over the symmetric window the search slides. Percentile: 2048 bins of |x| (ORT's default symmetric
# histogram) so a 99.99 cut lands between bins, not on the max.
_CALIBRATOR_OPTIONS = {
    "minmax": {"symmetric": False},
    "entropy": {"num_bins": 1024, "num_quantized_bins": 256, "symmetric": False},
    "percentile": {"num_bins": 2048, "symmetric": True},
}
# Arrays per ORT collect_data() call: ORT keeps every intermediate tensor of a call in memory before
# reducing it, so a whole calibration set at 640x640 would need gigabytes; ranges and histograms
# are merged across calls.
CHUNK = 16

Calibration = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]


class ArrayReader:
    """ORT ``CalibrationDataReader`` over preprocessed arrays, served in chunks, with a progress callback.

    Args:
        arrays: Iterator of float32 arrays, CHW or NCHW.
        input_name: The graph input to feed.
        advance: Called once per array (e.g. a progress bar step).
        chunk: Arrays served before ``get_next`` reports the end of one ORT ``collect_data`` pass.
    """

    def __init__(
        self, arrays: Iterator[np.ndarray], input_name: str, advance: Callable[[], None], chunk: int = CHUNK
    ):
        self._arrays = arrays
        self._input_name = input_name
        self._advance = advance
        self._chunk = chunk
        self._left_in_chunk = chunk
        self._next = next(arrays, None)
        self.count = 0

    def has_more(self) -> bool:
        """True while arrays remain; starts a new chunk."""
        self._left_in_chunk = self._chunk
        return self._next is not None

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next feed dict, or None at the end of the chunk (ORT's protocol)."""
        if self._next is None or self._left_in_chunk == 0:
            return None
        array, self._next = self._next, next(self._arrays, None)
        self._left_in_chunk -= 1
        self.count += 1
        self._advance()
        return {self._input_name: as_batch(array)}


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable driving a rich progress bar on stderr (a no-op when disabled)."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def as_batch(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a contiguous float32 batch (adds the batch axis to a CHW array)."""
    batch = np.ascontiguousarray(array, dtype=np.float32)
    return batch[None] if batch.ndim == 3 else batch


def calibration_source(calibration: Calibration) -> Callable[[], Iterator[np.ndarray]]:
    """Turn a calibration argument into a callable giving a fresh iterator each time.

    A one-shot iterator (e.g. a generator) is materialised into a list, since sensitivity analysis
    and auto-calibration iterate more than once.
    """
    if callable(calibration):
        return lambda: iter(calibration())
    if iter(calibration) is calibration:
        cached = list(calibration)
        return lambda: iter(cached)
    return lambda: iter(calibration)


def _non_empty(arrays: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    iterator = iter(arrays)
    first = next(iterator, None)
    if first is None:
        raise CalibrationError(
            "calibration set is empty",
            "pass at least one preprocessed image (tens to a few hundred in-distribution images work best)",
        )
    yield first
    yield from iterator


def _sized(calibration: Calibration) -> int | None:
    return len(calibration) if hasattr(calibration, "__len__") else None  # type: ignore[arg-type]


def resolve_input_name(model: Any, input_name: str | None) -> str:
    """Return ``input_name`` if the model has it, else the model's first input; ConfigError if unknown."""
    from edgekit.export.onnx import graph_inputs

    names = [vi.name for vi in graph_inputs(model)]
    if input_name is None:
        return names[0]
    if input_name not in names:
        raise ConfigError(f"model has no input {input_name!r} (inputs: {names})", "omit input_name")
    return input_name


def check_method(method: str) -> None:
    """Raise ConfigError unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}", f"use one of {', '.join(METHODS)}")


def ort_method(method: str) -> Any:
    """Map an edgekit method name to ORT's ``CalibrationMethod``."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]


def compute_tensors_data(
    model_path: Path,
    calibration: Calibration,
    method: str,
    *,
    percentile: float = 99.99,
    input_name: str | None = None,
    progress: bool = False,
    workdir: Path,
) -> tuple[Any, int]:
    """Run ORT's calibrator with working settings; return (``TensorsData``, arrays seen)."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator

    from edgekit.quantize.entropy import use_fast_entropy

    check_method(method)
    name = resolve_input_name(onnx.load(str(model_path), load_external_data=False), input_name)
    options = dict(_CALIBRATOR_OPTIONS[method], percentile=percentile)
    with progress_bar(progress, f"calibrating ({method})", _sized(calibration)) as advance:
        source = calibration() if callable(calibration) else calibration
        reader = ArrayReader(_non_empty(source), name, advance)
        # ORT prints its progress to stdout; our bar (on stderr) replaces it.
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(
                model_path,
                list(OP_TYPES_TO_QUANTIZE),
                augmented_model_path=str(workdir / "augmented.onnx"),
                calibrate_method=ort_method(method),
                extra_options=options,
            )
            if method == "entropy":
                use_fast_entropy(calibrator)
            while reader.has_more():
                calibrator.collect_data(reader)
            data = calibrator.compute_data()
    return data, reader.count


def tensor_ranges(
    fp32_onnx: str | Path,
    calibration: Calibration,
    method: str = "minmax",
    *,
    percentile: float = 99.99,
    input_name: str | None = None,
    progress: bool = False,
) -> dict[str, tuple[float, float]]:
    """Calibrate and return each activation tensor's (min, max) range as the chosen method sets it.

    Used by exporters of other formats (e.g. a TensorRT calibration cache).

    Args:
        fp32_onnx: The FP32 model.
        calibration: Preprocessed arrays, or a callable returning a fresh iterable of them.
        method: minmax, entropy or percentile.
        percentile: For ``percentile``.
        input_name: Graph input to feed (default: the first).
        progress: Show a progress bar.

    Returns:
        Tensor name -> (min, max).
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp:
        prepared = prepare_model(Path(fp32_onnx), Path(tmp))
        data, _ = compute_tensors_data(
            prepared,
            calibration,
            method,
            percentile=percentile,
            input_name=input_name,
            progress=progress,
            workdir=Path(tmp),
        )
    return {name: _bounds(td.range_value) for name, td in data.items()}


def _bounds(range_value: tuple[Any, Any]) -> tuple[float, float]:
    low, high = (float(np.asarray(v).reshape(-1)[0]) for v in range_value)
    return low, high


#: Per-channel ``DequantizeLinear`` (its ``axis``) needs opset 13.
MIN_QDQ_OPSET = 13


def raise_opset(model: Any, opset: int) -> Any:
    """Return ``model`` at ``opset`` at least (``onnx.version_converter``), unchanged when it already is.

    Raises:
        ModelError: The converter cannot take the model to ``opset`` (names the op it stopped at).
    """
    from onnx import version_converter

    from edgekit.core.errors import ModelError

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises RuntimeError / ValidationError per adapter
        raise ModelError(
            f"the model is opset {current}; INT8 with per-channel weights needs opset {opset}, and "
            f"onnx's converter could not raise it: {str(exc).strip().splitlines()[0][:300]}",
            f"re-export the model at opset {opset} or later (e.g. torch.onnx.export(..., opset_version=17))",
        ) from exc


def prepare_model(fp32_onnx: Path, workdir: Path) -> Path:
    """Name every node, then run ORT's ``quant_pre_process`` (shape inference only) into ``workdir``.

    Shape inference gives the quantizer every tensor's type and shape (symbolic inference copes with
    the dynamic batch of Ultralytics exports); graph optimisation is skipped because it renames fused
    nodes, which would break user-given ``keep_float`` names. It also marks the model pre-processed,
    which silences ORT's warning. A model below opset 13 is converted to 13 first: per-channel QDQ
    writes ``DequantizeLinear(axis=...)``, which opset 13 introduced (Ultralytics exports at 12 for some
    targets, YOLOX's at 11).
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    from edgekit.export.onnx import load_checked

    model = qgraph.ensure_node_names(raise_opset(load_checked(fp32_onnx), MIN_QDQ_OPSET))
    named = workdir / "named.onnx"
    onnx.save(model, str(named))
    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(named), str(prepared), skip_optimization=True)
    return prepared


def calibration_cache(
    prepared: Path,
    calibration: Calibration,
    method: str,
    percentile: float,
    input_name: str | None,
    progress: bool,
    workdir: Path,
) -> tuple[Path, int]:
    """Calibrate ``prepared`` and write ORT's calibration cache; return (cache path, arrays seen)."""
    from onnxruntime.quantization import save_tensors_data

    data, count = compute_tensors_data(
        prepared,
        calibration,
        method,
        percentile=percentile,
        input_name=input_name,
        progress=progress,
        workdir=workdir,
    )
    cache = workdir / f"ranges-{method}.json"
    save_tensors_data(data, cache)
    return cache, count
