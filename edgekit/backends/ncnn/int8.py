"""ncnn INT8 models written by edgekit, as ncnn2int8 does (it is not in the ncnn wheel or in Debian).

:func:`build_int8` calibrates (:mod:`edgekit.backends.ncnn.calibration`), writes the table and then the
int8 model following ``tools/quantize/ncnn2int8.cpp`` and ``tools/modelwriter.h`` in Tencent/ncnn:

* a quantized layer's weights become int8 (tag ``0x000D4B38``), its param gets ``8=int8_scale_term``
  (2 for Convolution/InnerProduct; 1 for ConvolutionDepthWise, whose weight scales are per group), and
  the scales follow its bias in the bin: weight scales, then the input scale (``src/layer/
  convolution.cpp`` ``load_model``);
* a conv whose output feeds only int8 convs (directly or through a Split) is fused to requantize:
  term + 100 and the consumer's input scale appended, so it outputs int8;
* layers without a table entry stay float, stored as fp16 like ncnn2int8 (``float_storage="fp32"``
  keeps fp32). Nothing is written unless all three files are complete and the model loads.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.ncnn.calibration import (
    METHODS,
    MIN_IMAGES,
    QUANTIZABLE,
    Calibration,
    Int8Table,
    activation_scales,
    checked_image,
    collect_stats,
    first_image,
    read_table,
    scale_count,
    weight_scales,
)
from edgekit.backends.ncnn.convert import check_loads, run_ncnn
from edgekit.backends.ncnn.format import (
    TAG_FP16,
    TAG_INT8,
    LayerWeights,
    NcnnLayer,
    encode_raw,
    encode_tagged,
    format_param,
    read_param,
    read_weights,
    weight_layout,
)
from edgekit.core.errors import BuildError, CalibrationError, ConfigError
from edgekit.core.files import atomic_write_bytes, atomic_write_text

__all__ = ["Int8Result", "Int8Table", "build_int8", "quantize_ncnn", "read_table"]
OUTPUT_NAMES = ("model.table", "model.int8.param", "model.int8.bin")
_CONVS = ("Convolution", "ConvolutionDepthWise")


@dataclass
class Int8Result:
    """What :func:`build_int8` made.

    Attributes:
        table: The calibration table.
        param: The int8 ``.param``.
        bin: The int8 ``.bin``.
        method: ``"kl"`` or ``"aciq"``.
        activation_scales: Layer name -> input-blob scale.
        weight_scales: Layer name -> weight scales.
        quantized_layers: How many layers run in int8.
        images: Calibration images used.
        cosine: Cosine similarity of int8 vs fp32 ncnn outputs on the first calibration image.
        warnings: Things the caller should know (skipped layers, fp16 input, sparse histograms).
        ranking: ``[(layer, cost), ...]`` of a sensitivity ranking, worst first (set by the caller).
    """

    table: Path
    param: Path
    bin: Path
    method: str
    activation_scales: dict[str, float]
    weight_scales: dict[str, np.ndarray] = field(repr=False)
    quantized_layers: int
    images: int
    cosine: float
    warnings: list[str] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)


def build_int8(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    calibration: Calibration,
    method: str,
    out_dir: str | Path,
    threads: int = 1,
    *,
    skip_layers: Collection[str] = (),
    float_storage: str = "fp16",
    fuse_requantize: bool = True,
    min_images: int | None = None,
    more_float: Callable[[Int8Table], Collection[str]] | None = None,
    images_key: Hashable | None = None,
) -> Int8Result:
    """Calibrate an fp32 ncnn model and write its int8 table, param and bin.

    Args:
        param: fp32 ``.param`` (pnnx ``fp16=0``).
        bin: Its ``.bin``.
        calibration: Returns a fresh iterable of ``(1, 3, H, W)`` float32 arrays, preprocessed as the
            model expects; KL iterates it twice.
        method: ``"kl"`` or ``"aciq"``.
        out_dir: Receives ``model.table``, ``model.int8.param`` and ``model.int8.bin``, all or none.
        threads: ncnn threads for calibration.
        skip_layers: Layer names to keep in float.
        float_storage: How layers kept in float store weights: ``"fp16"`` (ncnn2int8) or ``"fp32"``.
        fuse_requantize: Let a conv feeding int8 convs output int8 directly, as ncnn2int8 does.
        min_images: Override :data:`MIN_IMAGES` for the method.
        more_float: Given the full table, names further layers to keep in float (a sensitivity
            ranking, :mod:`edgekit.backends.ncnn.sensitivity`); their scales are dropped from the table.
        images_key: Names the images ``calibration`` yields, so that the fp32 statistics are kept for
            the process (:func:`~edgekit.backends.ncnn.calibration.collect_stats`).

    Raises:
        CalibrationError: Too few images, a bad image, or a layer whose input is zero on every image.
        ConfigError: Unknown method, storage or ``skip_layers`` name.
        BuildError: Nothing to quantize, or the written model does not load.

    Example:
        >>> res = build_int8("m.param", "m.bin", lambda: images, "kl", "out/int8")  # doctest: +SKIP
        >>> res.quantized_layers, round(res.cosine, 3)  # doctest: +SKIP
        (8, 0.999)
    """
    if method not in METHODS or float_storage not in ("fp16", "fp32"):
        raise ConfigError(f"unknown int8 option {method!r}/{float_storage!r}", "method kl|aciq, fp16|fp32")
    layers = read_param(param)
    weights = read_weights(layers, Path(bin).read_bytes(), str(bin))
    targets = _targets(weights, skip_layers)
    needed = MIN_IMAGES[method] if min_images is None else min_images
    layers_in = [w.layer for w in targets]
    stats = collect_stats(param, bin, layers_in, calibration, method, threads, needed, images_key)
    table = Int8Table(
        {w.layer.name: weight_scales(w, method) for w in targets},
        {name: np.array([s], np.float32) for name, s in activation_scales(stats, method).items()},
    )
    ranked = list(more_float(table)) if more_float is not None else []
    if ranked:
        table = Int8Table(
            {n: s for n, s in table.weight_scales.items() if n not in ranked},
            {n: s for n, s in table.activation_scales.items() if n not in ranked},
            table.other,
        )
    result = Int8Result(
        *(Path(out_dir) / name for name in OUTPUT_NAMES),
        method=method,
        activation_scales={name: float(s[0]) for name, s in table.activation_scales.items()},
        weight_scales=table.weight_scales,
        quantized_layers=0,
        images=stats.images,
        cosine=math.nan,
        warnings=_input_warnings(targets, skip_layers)
        + [f"layer '{name}' kept in float (ranked sensitive)" for name in ranked]
        + stats.warnings,
    )
    options = {"float_storage": float_storage, "fuse_requantize": fuse_requantize}
    return _write_outputs(param, bin, table, result, calibration, options)


def _targets(weights: list[LayerWeights], skip_layers: Collection[str]) -> list[LayerWeights]:
    unknown = set(skip_layers) - {w.layer.name for w in weights if w.layer.type in QUANTIZABLE}
    if unknown:
        raise ConfigError(
            f"skip_layers names no quantizable layer: {', '.join(sorted(unknown))}",
            "use names of Convolution/ConvolutionDepthWise/InnerProduct layers from the .param",
        )
    targets = [w for w in weights if w.layer.type in QUANTIZABLE and w.layer.name not in skip_layers]
    targets = [w for w in targets if w.arrays]  # dynamic-weight convs have nothing to quantize
    if any(TAG_INT8 in w.storage for w in targets):
        raise BuildError("the model is already int8", "calibrate the fp32 model (pnnx fp16=0)")
    if not targets:
        raise BuildError(
            "the model has no Convolution, ConvolutionDepthWise or InnerProduct layer to quantize",
            "build it in fp32 or fp16 instead",
        )
    return targets


def _input_warnings(targets: list[LayerWeights], skip: Collection[str]) -> list[str]:
    notes = [f"layer '{name}' kept in float (skip_layers)" for name in skip]
    if any(TAG_FP16 in w.storage for w in targets):
        notes.append("the input bin stores fp16 weights; int8 weights were quantized from fp16 values")
    return notes


def quantize_ncnn(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    table: str | Path | Int8Table,
    out_param: str | Path,
    out_bin: str | Path,
    *,
    float_storage: str = "fp16",
    fuse_requantize: bool = True,
) -> list[str]:
    """Write the int8 model for ``table`` as ncnn2int8 does; return the names of int8 layers.

    Args:
        param: fp32 (or fp16) ``.param``.
        bin: Its ``.bin``.
        table: A table file or :class:`Int8Table`; layers it has no input scale for stay float.
        out_param: Where to write the int8 ``.param``.
        out_bin: Where to write the int8 ``.bin`` (each file atomically; :func:`build_int8` also
            makes the set all-or-nothing).
        float_storage: ``"fp16"`` (ncnn2int8's choice) or ``"fp32"`` for layers kept in float.
        fuse_requantize: Fuse conv -> int8 conv pairs into requantize, as ncnn2int8 does.

    Raises:
        CalibrationError: The table names a layer without weight scales, or with the wrong count.
        BuildError: The input model is already int8.
    """
    table = table if isinstance(table, Int8Table) else read_table(table)
    layers = read_param(param)
    weights = read_weights(layers, Path(bin).read_bytes(), str(bin))
    quantized = {w.layer.name: _quantize_layer(w, table) for w in weights if _in_table(w, table)}
    if fuse_requantize:
        _fuse_requantize([w.layer for w in weights], quantized)
    result = [quantized.get(w.layer.name, w) for w in weights]
    blob = b"".join(_encode(w, float_storage) for w in result)
    read_weights([w.layer for w in result], blob, "int8 bin")  # post-condition: layout round-trips
    atomic_write_bytes(out_bin, blob)
    atomic_write_text(out_param, format_param([w.layer for w in result]))
    return list(quantized)


def _in_table(weights: LayerWeights, table: Int8Table) -> bool:
    wanted = weights.layer.type in QUANTIZABLE and weights.layer.name in table.activation_scales
    if wanted and TAG_INT8 in weights.storage:
        raise BuildError(f"layer '{weights.layer.name}' is already int8", "quantize the fp32 model")
    return wanted and bool(weights.arrays)  # dynamic-weight convs carry no weights to quantize


def _quantize_layer(weights: LayerWeights, table: Int8Table) -> LayerWeights:
    layer = weights.layer
    scales = table.weight_scales.get(layer.name)
    if scales is None or len(scales) != scale_count(layer):
        found = "none" if scales is None else len(scales)
        raise CalibrationError(
            f"table has {found} weight scales for layer '{layer.name}', it needs {scale_count(layer)}",
            "the table was made for another model; recalibrate",
        )
    int8 = _quantize_rows(weights.get("weight"), scales)
    term = 1 if layer.type == "ConvolutionDepthWise" else 2
    new = layer.with_param(8, term)
    bias = weights.get("bias")
    bottom = table.activation_scales[layer.name][:1]
    arrays = [int8, *([] if bias is None else [bias]), scales.astype(np.float32), bottom]
    return LayerWeights(new, arrays, [TAG_INT8] + [None] * (len(arrays) - 1))


def _quantize_rows(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``float2int8(w * scale)`` per row: round half away from zero, clamp to [-127, 127]."""
    scaled = weight.astype(np.float32).reshape(len(scales), -1) * scales.astype(np.float32)[:, None]
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded, -127, 127).astype(np.int8).reshape(-1)


def _fuse_requantize(layers: list[NcnnLayer], quantized: dict[str, LayerWeights]) -> None:
    """A conv whose output feeds only int8 convs (directly or through a Split) outputs int8."""
    consumers = {blob: layer for layer in layers for blob in layer.bottoms}
    for layer in layers:
        if layer.type not in _CONVS or layer.name not in quantized:
            continue
        target = _int8_conv_consumer(layer.tops[0], consumers, quantized)
        if target is not None:
            _add_top_scale(quantized, layer.name, quantized[target].arrays[-1])


def _int8_conv_consumer(
    blob: str, consumers: dict[str, NcnnLayer], quantized: dict[str, LayerWeights]
) -> str | None:
    def int8_conv(name: str) -> NcnnLayer | None:
        layer = consumers.get(name)
        ok = layer is not None and layer.type in _CONVS and len(layer.bottoms) == 1
        return layer if ok and layer.name in quantized else None

    consumer = consumers.get(blob)
    if consumer is None:
        return None
    if consumer.type == "Split":
        if all(int8_conv(top) for top in consumer.tops):
            return int8_conv(consumer.tops[0]).name
        return None
    return consumer.name if int8_conv(blob) else None


def _add_top_scale(quantized: dict[str, LayerWeights], name: str, top_scale: np.ndarray) -> None:
    weights = quantized[name]
    layer = weights.layer.with_param(8, weights.layer.get_int(8) + 100)
    quantized[name] = LayerWeights(layer, [*weights.arrays, top_scale], [*weights.storage, None])


def _encode(weights: LayerWeights, float_storage: str) -> bytes:
    parts = []
    for segment, array in zip(weight_layout(weights.layer), weights.arrays, strict=True):
        parts.append(encode_tagged(array, float_storage) if segment.tagged else encode_raw(array))
    return b"".join(parts)


def _write_outputs(
    param: str | Path,
    bin: str | Path,  # noqa: A002
    table: Int8Table,
    result: Int8Result,
    calibration: Calibration,
    options: dict[str, Any],
) -> Int8Result:
    """Write table, param and bin into a temp folder, check the model, then move all three in."""
    out_dir = result.param.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out_dir) as tmp:
        table_path, param_path, bin_path = (Path(tmp) / name for name in OUTPUT_NAMES)
        table.write_table(table_path)
        layers = quantize_ncnn(param, bin, table_path, param_path, bin_path, **options)
        check_loads(param_path, bin_path)
        x = checked_image(first_image(calibration), 0, None)
        cosine = _cosine(
            run_ncnn(param, bin, x, int8=False, fp16=False),
            run_ncnn(param_path, bin_path, x, int8=True, fp16=False),
        )
        for path in (table_path, param_path, bin_path):
            os.replace(path, out_dir / path.name)
    if cosine < 0.99:
        result.warnings.append(f"int8 output has cosine {cosine:.4f} vs fp32 on the first calibration image")
    return replace(result, quantized_layers=len(layers), cosine=cosine)


def _cosine(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    ref = np.concatenate([o.ravel() for o in reference]).astype(np.float64)
    out = np.concatenate([o.ravel() for o in outputs]).astype(np.float64)
    return float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out) + 1e-30))
