"""Calibration for ncnn INT8, as ncnn2table does it: activation and weight scales, and the table file.

ncnn2table is not in the ncnn wheel or in Debian, so edgekit reproduces it
(``tools/quantize/ncnn2table.cpp`` in Tencent/ncnn) on top of the wheel's Python binding:

* Every Convolution, ConvolutionDepthWise and InnerProduct gets per-output-channel (per-group for
  depthwise) weight scales ``127 / max|w|`` and one scale for its input blob, measured by running the
  fp32 model over the calibration images and extracting that blob.
* ``kl`` picks the clip threshold minimising the KL divergence between the 2048-bin histogram of
  ``|x|`` and its 128-level quantization; ``aciq`` takes ncnn's Gaussian clip from the blob's max and
  size, and clips the weights the same way.
* As in ncnn2table, 3x3 stride-1 convolutions get 6-bit weights (``31 / max|w|``) because ncnn's int8
  Winograd F(4,3) kernel needs them. An all-zero channel gets scale 1 (ncnn2table would write inf).
* The table is ncnn2table's text: ``<layer>_param_0 <weight scales...>`` lines, then ``<layer> <input
  scale>`` lines. Values carry 9 significant digits where ncnn2table prints ``%f``; ncnn2int8 reads both.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.ncnn.convert import import_ncnn, load_net
from edgekit.backends.ncnn.format import LayerWeights, NcnnLayer, input_channels, read_param
from edgekit.core.errors import BuildError, CalibrationError, MissingExtraError
from edgekit.core.files import atomic_write_text

METHODS = ("kl", "aciq")
MIN_IMAGES = {"kl": 8, "aciq": 1}
"""Fewest calibration images each method accepts (KL's histogram is meaningless on a handful)."""
QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
HISTOGRAM_BINS = 2048
TARGET_BINS = 128
KL_EPS = 1e-4
_ACIQ_ALPHA = {8: 3.92403714, 6: 3.28691474}  # optimal Gaussian clip / std for 8- and 6-bit
_ACIQ_GAUSSIAN = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))
FIX = "use real images preprocessed exactly as at inference, or keep the layer in float (skip_layers=)"
Calibration = Callable[[], Iterable[np.ndarray]]


@dataclass
class Int8Table:
    """An ncnn calibration table.

    Attributes:
        weight_scales: Layer name -> per-channel (per-group for depthwise) weight scales.
        activation_scales: Layer name -> scale of the layer's input blob (one value).
        other: Further ``<layer>_param_N`` rows (N > 0, e.g. attention weights), kept verbatim.
    """

    weight_scales: dict[str, np.ndarray]
    activation_scales: dict[str, np.ndarray]
    other: dict[str, np.ndarray] = field(default_factory=dict)

    def write_table(self, path: str | Path) -> Path:
        """Write the table in ncnn2table's text format (atomically)."""
        rows = [(f"{name}_param_0", s) for name, s in self.weight_scales.items()]
        rows += list(self.other.items()) + list(self.activation_scales.items())
        text = "".join(key + " " + "".join(f"{v:.9g} " for v in values) + "\n" for key, values in rows)
        return atomic_write_text(path, text)


def read_table(path: str | Path) -> Int8Table:
    """Read a table written by :meth:`Int8Table.write_table` or by ncnn2table.

    Raises:
        CalibrationError: The file is missing or a value is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration table {path} does not exist", "run build_int8 first")
    table = Int8Table({}, {})
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, *values = line.split()
        try:
            scales = np.array([float(v) for v in values], dtype=np.float32)
        except ValueError as exc:
            raise CalibrationError(f"{path}:{number} has a non-numeric scale", "regenerate it") from exc
        layer, _, index = key.rpartition("_param_")
        if layer and index == "0":
            table.weight_scales[layer] = scales
        elif layer and index.isdigit():
            table.other[key] = scales
        else:
            table.activation_scales[key] = scales
    return table


@dataclass
class _BlobStats:
    absmax: float = 0.0
    size: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))
    kl_bin: int | None = None  # the histogram's KL threshold bin, once computed


@dataclass
class CalibrationStats:
    """Per-layer statistics of the input blobs of the layers to quantize.

    Attributes:
        blobs: Layer name -> ``absmax`` (over all images), ``size`` (elements per image) and, for KL,
            the ``|x|`` histogram.
        images: Images seen.
        warnings: E.g. histograms with fewer samples than bins.
    """

    blobs: dict[str, _BlobStats]
    images: int
    warnings: list[str] = field(default_factory=list)


#: Statistics kept for the process, keyed by the fp32 model's content, the method, the threads and the
#: caller's name for the images: a build search's candidates differ only in the layers they keep float.
_STATS: dict[tuple, CalibrationStats] = {}
_STATS_KEPT = 4


def collect_stats(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    layers: list[NcnnLayer],
    calibration: Calibration,
    method: str,
    threads: int = 1,
    min_images: int = 1,
    images_key: Hashable | None = None,
) -> CalibrationStats:
    """Run the fp32 model over the calibration images and gather what ``method`` needs.

    Like ncnn2table, KL makes two passes: the max first, then histograms over ``[0, max]``.

    Args:
        param: The fp32 ``.param``.
        bin: Its ``.bin``.
        layers: The layers whose input blobs are measured.
        calibration: Returns a fresh iterable of preprocessed ``(1, 3, H, W)`` float32 arrays.
        method: ``"kl"`` or ``"aciq"``.
        threads: ncnn threads.
        min_images: Fewest images the method accepts.
        images_key: Names the images ``calibration`` yields (e.g. the set's sha256, preprocessing and
            count). With it, the statistics are kept for the process and a later call on the same model
            bytes, method and images reuses them for any subset of their layers.

    Raises:
        CalibrationError: Fewer than ``min_images`` images, a bad image, or a layer whose input is
            zero on every image.
    """
    key = None
    if images_key is not None:
        from edgekit.core.files import sha256_file

        key = (sha256_file(param), sha256_file(bin), method, threads, images_key)
        kept = _STATS.get(key)
        if kept is not None and all(layer.name in kept.blobs for layer in layers):
            stats = CalibrationStats({layer.name: kept.blobs[layer.name] for layer in layers}, kept.images)
            _check_activated(stats, max(min_images, 1), method)
            return _with_warnings(stats, method)
    stats = _collect(param, bin, layers, calibration, method, threads, min_images)
    if key is not None:
        while len(_STATS) >= _STATS_KEPT:
            _STATS.pop(next(iter(_STATS)))
        _STATS[key] = stats
    return _with_warnings(stats, method)


def _with_warnings(stats: CalibrationStats, method: str) -> CalibrationStats:
    """A copy of ``stats`` warning of KL histograms with fewer samples than bins."""
    sparse = [n for n, b in stats.blobs.items() if method == "kl" and b.histogram.sum() < HISTOGRAM_BINS]
    warnings = [f"KL histograms have fewer samples than bins for {', '.join(sparse)}"] if sparse else []
    return CalibrationStats(dict(stats.blobs), stats.images, warnings)


def _collect(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    layers: list[NcnnLayer],
    calibration: Calibration,
    method: str,
    threads: int,
    min_images: int,
) -> CalibrationStats:
    net = load_net(param, bin, int8=False, fp16=False, threads=threads)
    channels = input_channels(read_param(param))
    stats = CalibrationStats({layer.name: _BlobStats() for layer in layers}, 0)
    for blobs in _activations(net, layers, calibration, channels):
        stats.images += 1
        for name, values in blobs.items():
            blob = stats.blobs[name]
            blob.absmax = max(blob.absmax, float(np.abs(values).max(initial=0.0)))
            blob.size = values.size
    _check_activated(stats, max(min_images, 1), method)
    if method == "kl":
        for blobs in _activations(net, layers, calibration, channels):
            for name, values in blobs.items():
                stats.blobs[name].histogram += _histogram(values, stats.blobs[name].absmax)
    return stats


def _activations(
    net: Any, layers: list[NcnnLayer], calibration: Calibration, channels: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, per image, the input blob of every layer, computed by ncnn in fp32."""
    ncnn = import_ncnn()
    input_name = net.input_names()[0]
    shape = None
    for index, x in enumerate(calibration()):
        x = checked_image(x, index, shape)
        if channels is not None and x.shape[1] != channels:
            raise CalibrationError(
                f"calibration image {index} has {x.shape[1]} channels, the model takes {channels}", FIX
            )
        shape = x.shape
        extractor = net.create_extractor()
        extractor.set_light_mode(False)  # keep every blob: we read many from one forward pass
        extractor.input(input_name, ncnn.Mat(x[0]).clone())
        blobs = {}
        for layer in layers:
            ret, mat = extractor.extract(layer.bottoms[0])
            if ret != 0:
                raise CalibrationError(f"ncnn failed on calibration image {index}", "check its shape")
            blobs[layer.name] = np.array(mat, dtype=np.float32)
        yield blobs


def checked_image(x: Any, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    """Return calibration image ``index`` as contiguous float32, or raise CalibrationError.

    Args:
        x: The image, ``(1, C, H, W)``, already preprocessed.
        index: Its position, for the message.
        shape: Shape every image must have (that of the first), or ``None``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise CalibrationError(
            f"calibration image {index} is {x.dtype}, not float",
            "preprocess the images as the model expects (e.g. /255) before calibrating",
        )
    if x.ndim != 4 or x.shape[0] != 1 or (shape is not None and x.shape != shape):
        expected = shape or "(1, C, H, W)"
        raise CalibrationError(f"calibration image {index} has shape {x.shape}, expected {expected}", FIX)
    if not np.isfinite(x).all():
        raise CalibrationError(f"calibration image {index} contains inf or NaN", FIX)
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_activated(stats: CalibrationStats, min_images: int, method: str) -> None:
    if stats.images == 0:
        raise CalibrationError("the calibration set is empty", "pass at least a few calibration images")
    if stats.images < min_images:
        raise CalibrationError(
            f"{method} calibration needs at least {min_images} images, got {stats.images}",
            "pass more calibration images (a few hundred is typical)",
        )
    for name, blob in stats.blobs.items():
        if not math.isfinite(blob.absmax) or blob.absmax <= 0.0:
            raise CalibrationError(
                f"the input of layer '{name}' was {blob.absmax} on all {stats.images} calibration "
                "images, so its int8 scale would be inf or NaN",
                FIX,
            )


def _histogram(values: np.ndarray, absmax: float) -> np.ndarray:
    """|x| histogram over [0, absmax], exact zeros left out (ncnn2table's binning, in float32)."""
    magnitude = np.abs(values[values != 0]).astype(np.float32)
    index = (magnitude / np.float32(absmax) * np.float32(HISTOGRAM_BINS)).astype(np.int64)
    return np.bincount(np.minimum(index, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS)


def activation_scales(stats: CalibrationStats, method: str) -> dict[str, float]:
    """Return layer name -> input-blob scale ``127 / threshold``.

    Raises:
        CalibrationError: A scale is not a positive finite number.
    """
    scales = {}
    for name, blob in stats.blobs.items():
        if method == "kl":
            if blob.kl_bin is None:
                blob.kl_bin = kl_threshold_bin(blob.histogram)
            threshold = (blob.kl_bin + 0.5) * blob.absmax / HISTOGRAM_BINS
        else:
            threshold = aciq_clip(blob.absmax, blob.size)
        scale = 127.0 / threshold
        if not (math.isfinite(scale) and scale > 0):
            raise CalibrationError(f"layer '{name}' got int8 scale {scale}", FIX)
        scales[name] = float(scale)
    return scales


def kl_threshold_bin(histogram: np.ndarray) -> int:
    """Return the histogram bin (>= 128) whose clip loses least information, as ncnn2table does."""
    normed = histogram / histogram.sum()
    cumulative = np.concatenate(([0.0], np.cumsum(normed)))
    best, best_kl = TARGET_BINS, math.inf
    for threshold in range(TARGET_BINS, len(normed)):
        divergence = _kl_divergence(normed, cumulative, threshold)
        if divergence < best_kl:
            best, best_kl = threshold, divergence
    return best


def _kl_divergence(normed: np.ndarray, cumulative: np.ndarray, threshold: int) -> float:
    """KL(clipped histogram || its 128-level quantization expanded back), ncnn2table's definition.

    Both distributions treat a histogram bin as uniform mass over its width; a target level covers
    ``threshold / 128`` bins, fractional at the edges, and spreads its mean back evenly.
    """
    clipped = normed[:threshold] + KL_EPS
    clipped[-1] += cumulative[-1] - cumulative[threshold]  # the clipped tail lands in the last bin
    edges = np.arange(TARGET_BINS + 1) * (threshold / TARGET_BINS)
    mass_below = np.interp(edges, np.arange(len(cumulative)), cumulative)
    expanded = np.diff(np.interp(np.arange(threshold + 1), edges, mass_below)) + KL_EPS
    return float(np.sum(clipped * np.log(clipped / expanded)))


def aciq_clip(absmax: Any, size: int, bits: int = 8) -> Any:
    """Return ncnn's ACIQ Gaussian clip: ``alpha(bits) * std``, with ``std`` estimated from max and size.

    A single value has no spread to estimate, so it is not clipped.
    """
    if size < 2:
        return absmax
    std = absmax * 2 * _ACIQ_GAUSSIAN / math.sqrt(2 * math.log(size))
    return _ACIQ_ALPHA[bits] * std


def weight_scales(weights: LayerWeights, method: str) -> np.ndarray:
    """Per-output-channel (per-group for depthwise) weight scales, as ncnn2table computes them."""
    layer = weights.layer
    rows = weights.get("weight").reshape(scale_count(layer), -1)
    absmax = np.abs(rows).max(axis=1)
    bits = 6 if _winograd_6bit(layer) else 8
    threshold = absmax if method == "kl" else aciq_clip(absmax, rows.shape[1], bits)
    with np.errstate(divide="ignore"):
        scales = (2 ** (bits - 1) - 1) / threshold
    return np.where(absmax == 0, 1.0, scales).astype(np.float32)


def scale_count(layer: NcnnLayer) -> int:
    """Number of weight scales a layer has: one per group for depthwise, else one per output."""
    return layer.get_int(7, 1) if layer.type == "ConvolutionDepthWise" else layer.get_int(0)


def _winograd_6bit(layer: NcnnLayer) -> bool:
    """ncnn2table's rule: a 3x3 stride-1 dilation-1 Convolution may run int8 Winograd F(4,3)."""
    if layer.type != "Convolution":
        return False
    kw, dw, sw = layer.get_int(1), layer.get_int(2, 1), layer.get_int(3, 1)
    kh, dh, sh = layer.get_int(11, kw), layer.get_int(12, dw), layer.get_int(13, sw)
    return (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)


def find_ncnn2table() -> Path | None:
    """Return ncnn's own ``ncnn2table`` when it is on ``PATH`` (it is not in the wheel)."""
    found = shutil.which("ncnn2table")
    return Path(found) if found else None


def run_ncnn2table(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    calibration: Calibration,
    method: str,
    work: str | Path,
    *,
    threads: int = 1,
    timeout_s: float = 600.0,
) -> Int8Table:
    """Run ncnn's ncnn2table on the same images (saved as ``.npy``, ``type=1``) and read its table.

    Raises:
        MissingExtraError: ncnn2table is not on ``PATH``.
        BuildError: It failed.
        CalibrationError: Its table holds inf/NaN (it exits 0 on an empty or unreadable list).
    """
    exe = find_ncnn2table()
    if exe is None:
        raise MissingExtraError("ncnn2table is not on PATH", "build ncnn's tools/quantize from source")
    work = Path(work)
    (work / "npy").mkdir(parents=True, exist_ok=True)
    paths, shape = [], None
    for index, x in enumerate(calibration()):
        x = checked_image(x, index, shape)
        shape = x.shape
        paths.append(work / "npy" / f"{index:05d}.npy")
        np.save(paths[-1], x[0])
    if shape is None:
        raise CalibrationError("the calibration set is empty", "pass at least a few calibration images")
    (work / "list.txt").write_text("".join(f"{p}\n" for p in paths))
    _, c, h, w = shape
    argv = [
        str(exe),
        str(param),
        str(bin),
        str(work / "list.txt"),
        str(work / "ncnn.table"),
        f"shape=[{w},{h},{c}]",
        f"thread={threads}",
        f"method={method}",
        "type=1",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise BuildError(f"ncnn2table exited {done.returncode}", done.stderr.strip()[-600:])
    table = read_table(work / "ncnn.table")
    bad = [n for n, s in table.activation_scales.items() if not np.isfinite(s).all()]
    if bad:
        raise CalibrationError(f"ncnn2table wrote inf/NaN scales for {', '.join(bad)}", FIX)
    return table


def first_image(calibration: Calibration) -> np.ndarray:
    """Return the first calibration image (raises CalibrationError when there is none)."""
    for x in calibration():
        return np.asarray(x)
    raise CalibrationError("the calibration set is empty", "pass at least a few calibration images")
