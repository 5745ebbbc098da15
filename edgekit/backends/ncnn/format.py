"""ncnn's model files read and written without ncnn: the text ``.param`` and the weight ``.bin``.

A ``.param`` file is the magic ``7767517``, a ``<layer count> <blob count>`` line, then one line per
layer: ``Type Name n_in n_out <input blobs> <output blobs> k=v ...``. Keys at or below ``-23300`` carry
arrays (``-23303=2,1,0`` is array param 3).

A ``.bin`` file is every layer's weights, in layer order, with nothing in between. Each layer reads a
fixed sequence of arrays (``ModelBin::load(n, type)`` in ``src/layer/*.cpp``): *tagged* arrays
(``type=0``) start with a 4-byte storage tag and are padded to 4 bytes; *raw* arrays (``type=1``) are
plain little-endian float32. :func:`weight_layout` is that sequence for the layers edgekit meets in
detectors; a layer it does not know stops :func:`read_weights` instead of mis-reading the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit.core.errors import ModelError

PARAM_MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP32_SCALED = 0x0002C056  # float32 too; written by old caffe2ncnn
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38

#: Layers that read nothing from the ``.bin`` (checked, so an unknown weighted layer is an error).
WEIGHTLESS = frozenset(
    "Input Split Concat Slice Crop Reshape Permute Flatten Interp Pooling Pooling1D Pooling3D ReLU "
    "Sigmoid Swish TanH Mish HardSwish HardSigmoid Clip ELU SELU GELU CELU Softplus Softmax BinaryOp "
    "UnaryOp Eltwise Dropout Noop Padding Reduction Squeeze ExpandDims ShuffleChannel PixelShuffle "
    "Reorg Tile Exp Log Power AbsVal BNLL Threshold Cast Flip MatMul Einsum GridSample Fold Unfold "
    "CopyTo CumulativeSum Erf GLU Shrink ArgMax Packing DeepCopy LRN MVN".split()
)
_CONV_FAMILY = {
    "Convolution": 19,
    "Convolution1D": 19,
    "Convolution3D": 19,
    "ConvolutionDepthWise": 19,
    "ConvolutionDepthWise1D": 19,
    "ConvolutionDepthWise3D": 19,
    "Deconvolution": 28,
    "Deconvolution1D": 28,
    "Deconvolution3D": 28,
    "DeconvolutionDepthWise": 28,
    "DeconvolutionDepthWise1D": 28,
    "DeconvolutionDepthWise3D": 28,
}
"""Convolution-like layer type -> id of its ``dynamic_weight`` param (weights come from a blob)."""


@dataclass(frozen=True)
class NcnnLayer:
    """One line of a ``.param`` file.

    Attributes:
        type: ncnn layer type (``Convolution``, ``Swish``, ...); pnnx leftovers contain a dot.
        name: Layer name, unique in the file; calibration tables are keyed by it.
        bottoms: Input blob names.
        tops: Output blob names.
        params: Param id -> value text, in file order (arrays keep their ``n,v1,...`` text).
    """

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str] = field(default_factory=dict)

    def get_int(self, key: int, default: int = 0) -> int:
        """Return integer param ``key`` (``default`` when absent)."""
        return int(self.params[key]) if key in self.params else default

    def with_param(self, key: int, value: int | float) -> NcnnLayer:
        """Return a copy with param ``key`` set (added at the end when absent)."""
        return replace(self, params={**self.params, key: str(value)})

    def to_line(self) -> str:
        """Format the layer as a ``.param`` line (ncnn's own column widths)."""
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        blobs = " ".join((*self.bottoms, *self.tops))
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        return " ".join(part for part in (head, blobs, params) if part)


def parse_param(text: str, source: str = "<param>") -> list[NcnnLayer]:
    r"""Parse the text of a ``.param`` file.

    Raises:
        ModelError: Wrong magic, a truncated file or a malformed layer line.

    Example:
        >>> layers = parse_param("7767517\n2 2\nInput in0 0 1 in0\nReLU relu_0 1 1 in0 out0 0=0.1\n")
        >>> layers[1].type, layers[1].bottoms, layers[1].params
        ('ReLU', ('in0',), {0: '0.1'})
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise ModelError(f"{source} is not an ncnn text param (no {PARAM_MAGIC} magic)", _REGENERATE)
    try:
        layer_count = int(lines[1].split()[0])
        layers = [_parse_layer(line) for line in lines[2:]]
    except (IndexError, ValueError) as exc:
        raise ModelError(f"{source} has a malformed line: {exc}", _REGENERATE) from exc
    if len(layers) != layer_count:
        raise ModelError(f"{source} declares {layer_count} layers but has {len(layers)}", _REGENERATE)
    return layers


_REGENERATE = "regenerate the model with pnnx"


def _parse_layer(line: str) -> NcnnLayer:
    tokens = line.split()
    n_in, n_out = int(tokens[2]), int(tokens[3])
    blobs = tokens[4 : 4 + n_in + n_out]
    if len(blobs) != n_in + n_out:
        raise ValueError(f"layer {tokens[1]!r} lists fewer blobs than {n_in}+{n_out}")
    params = {}
    for token in tokens[4 + n_in + n_out :]:
        key, _, value = token.partition("=")
        params[int(key)] = value
    return NcnnLayer(tokens[0], tokens[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params)


def read_param(path: str | Path) -> list[NcnnLayer]:
    """Read and parse a ``.param`` file (see :func:`parse_param`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ncnn param {path} does not exist", "convert the model first")
    return parse_param(path.read_text(encoding="utf-8", errors="replace"), str(path))


def format_param(layers: list[NcnnLayer]) -> str:
    """Format layers as a complete ``.param`` text (the inverse of :func:`parse_param`)."""
    blobs = {blob for layer in layers for blob in (*layer.bottoms, *layer.tops)}
    lines = [str(PARAM_MAGIC), f"{len(layers)} {len(blobs)}", *(layer.to_line() for layer in layers)]
    return "\n".join(lines) + "\n"


def int8_layers(layers: list[NcnnLayer]) -> list[str]:
    """Names of layers with an ``int8_scale_term`` (param 8 of Convolution/DepthWise/InnerProduct)."""
    kinds = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
    return [layer.name for layer in layers if layer.type in kinds and layer.get_int(8)]


def input_channels(layers: list[NcnnLayer]) -> int | None:
    """Channels the first layer after the input expects, when it is a 2-D conv (else ``None``).

    ncnn does not check this: a wrong channel count silently computes garbage.
    """
    inputs, _ = graph_io(layers)
    first = next((layer for layer in layers if inputs and inputs[0] in layer.bottoms), None)
    if first is None or first.type not in ("Convolution", "ConvolutionDepthWise"):
        return None
    kernel = first.get_int(1) * first.get_int(11, first.get_int(1))
    group = first.get_int(7, 1) if first.type == "ConvolutionDepthWise" else 1
    per_output = first.get_int(6) // max(first.get_int(0) * kernel, 1)
    return per_output * group or None


def graph_io(layers: list[NcnnLayer]) -> tuple[list[str], list[str]]:
    """Return (input blob names, output blob names): Input tops, and blobs nobody consumes."""
    inputs = [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {blob for layer in layers for blob in layer.bottoms}
    outputs = [top for layer in layers for top in layer.tops if top not in consumed]
    return inputs, outputs


@dataclass(frozen=True)
class Segment:
    """One array a layer reads from the ``.bin``.

    Attributes:
        role: What the array is (``weight``, ``bias``, ``weight_scales``, ...).
        count: Number of elements.
        tagged: ``True`` for ``ModelBin::load(n, 0)`` (storage tag first), ``False`` for raw float32.
    """

    role: str
    count: int
    tagged: bool = False


def weight_layout(layer: NcnnLayer) -> list[Segment]:
    """Return the arrays ``layer`` reads from the ``.bin``, in order.

    Raises:
        ModelError: The layer type may carry weights and edgekit does not know its layout.
    """
    if layer.type in WEIGHTLESS:
        return []
    if layer.type in _CONV_FAMILY:
        return _conv_layout(layer)
    if layer.type == "InnerProduct":
        return _weights_bias(layer, size_key=2, bias_key=1) + _int8_scales(layer, layer.get_int(0))
    simple = _simple_layout(layer)
    if simple is None:
        raise ModelError(
            f"edgekit does not know how layer type {layer.type} (layer '{layer.name}') stores weights",
            "keep this layer out of the model, or quantize it with ncnn's own ncnn2int8",
        )
    return simple


def _conv_layout(layer: NcnnLayer) -> list[Segment]:
    if layer.get_int(_CONV_FAMILY[layer.type]):
        return []  # dynamic weight: read from a second input blob at run time
    segments = _weights_bias(layer, size_key=6, bias_key=5)
    if layer.type == "Convolution":
        return segments + _int8_scales(layer, layer.get_int(0))
    if layer.type == "ConvolutionDepthWise":
        term = layer.get_int(8)
        per_group = term % 100 == 1
        return segments + _int8_scales(layer, layer.get_int(7, 1) if per_group else 1)
    return segments


def _weights_bias(layer: NcnnLayer, size_key: int, bias_key: int) -> list[Segment]:
    segments = [Segment("weight", layer.get_int(size_key), tagged=True)]
    if layer.get_int(bias_key):
        segments.append(Segment("bias", layer.get_int(0)))
    return segments


def _int8_scales(layer: NcnnLayer, weight_scale_count: int) -> list[Segment]:
    """Scales after the weights of an int8 layer: per-channel weight, input, and (requantize) output."""
    term = layer.get_int(8)  # int8_scale_term, param 8 on all three quantizable layers
    if not term:
        return []
    segments = [Segment("weight_scales", weight_scale_count), Segment("bottom_scale", 1)]
    return segments + ([Segment("top_scale", 1)] if term > 100 else [])


def _simple_layout(layer: NcnnLayer) -> list[Segment] | None:
    get = layer.get_int
    if layer.type == "BatchNorm":
        return [Segment(role, get(0)) for role in ("slope", "mean", "var", "bias")]
    if layer.type == "Scale":
        size = get(0)
        scale = [] if size == -233 else [Segment("scale", size)]
        return scale + ([Segment("bias", size)] if get(1) else [])
    if layer.type in ("PReLU", "Bias"):
        return [Segment("data", get(0))]
    if layer.type == "MemoryData":
        dims = [d for d in (get(0), get(1), get(11), get(2)) if d]
        return [Segment("data", int(np.prod(dims)) if dims else 1)]
    if layer.type in ("LayerNorm", "InstanceNorm", "GroupNorm"):
        size = get(1) if layer.type == "GroupNorm" else get(0)
        affine = get(3 if layer.type == "GroupNorm" else 2, 1)
        return [Segment("gamma", size), Segment("beta", size)] if affine else []
    if layer.type == "Normalize":
        return [Segment("scale", get(3))]
    return None


@dataclass
class LayerWeights:
    """The arrays one layer read from the ``.bin``.

    Attributes:
        layer: The layer.
        arrays: One float32 array per :class:`Segment` (int8 weights stay int8).
        storage: Storage tag of each tagged array (``None`` for raw arrays).
    """

    layer: NcnnLayer
    arrays: list[np.ndarray]
    storage: list[int | None]

    def get(self, role: str) -> np.ndarray | None:
        """Return the array with ``role`` (``None`` when the layer has none)."""
        for segment, array in zip(weight_layout(self.layer), self.arrays, strict=True):
            if segment.role == role:
                return array
        return None


def read_weights(layers: list[NcnnLayer], data: bytes, source: str = "<bin>") -> list[LayerWeights]:
    """Split a ``.bin`` into per-layer arrays, checking that every byte is accounted for.

    Raises:
        ModelError: The file is shorter or longer than the param says, or holds an unknown storage tag.
    """
    offset, result = 0, []
    try:
        for layer in layers:
            arrays, storage = [], []
            for segment in weight_layout(layer):
                array, tag, offset = _read_segment(data, offset, segment)
                arrays.append(array)
                storage.append(tag)
            result.append(LayerWeights(layer, arrays, storage))
    except (struct.error, ValueError) as exc:
        raise ModelError(f"{source} is shorter than its param describes ({exc})", _REGENERATE) from exc
    if offset != len(data):
        raise ModelError(
            f"{source} has {len(data) - offset} bytes more than its param describes",
            "the .param and .bin do not belong together; regenerate both",
        )
    return result


def _read_segment(data: bytes, offset: int, segment: Segment) -> tuple[np.ndarray, int | None, int]:
    if not segment.tagged:
        return _frombuffer(data, offset, "<f4", segment.count), None, offset + 4 * segment.count
    (tag,) = struct.unpack_from("<I", data, offset)
    offset += 4
    n = segment.count
    if tag in (TAG_FP32, TAG_FP32_SCALED):
        return _frombuffer(data, offset, "<f4", n), tag, offset + 4 * n
    if tag == TAG_FP16:
        return _frombuffer(data, offset, "<f2", n).astype(np.float32), tag, offset + _align4(2 * n)
    if tag == TAG_INT8:
        return _frombuffer(data, offset, "i1", n), tag, offset + _align4(n)
    # any other non-zero tag: a 256-entry float lookup table followed by uint8 indices
    table = _frombuffer(data, offset, "<f4", 256)
    indices = _frombuffer(data, offset + 1024, "u1", n)
    return table[indices], tag, offset + 1024 + _align4(n)


def _frombuffer(data: bytes, offset: int, dtype: str, count: int) -> np.ndarray:
    size = np.dtype(dtype).itemsize * count
    if offset + size > len(data):
        raise ValueError(f"needs {size} bytes at offset {offset}, file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy()


def _align4(n: int) -> int:
    return (n + 3) & ~3


def encode_tagged(array: np.ndarray, storage: str) -> bytes:
    """Encode a tagged array the way ncnn's ModelWriter does: int8 as int8, floats as ``storage``.

    Args:
        array: int8 or float weights.
        storage: ``"fp16"`` or ``"fp32"`` for float arrays (ncnn2int8 uses fp16).
    """
    if array.dtype == np.int8:
        return _padded(struct.pack("<I", TAG_INT8) + array.tobytes())
    if storage == "fp16":
        return _padded(struct.pack("<I", TAG_FP16) + array.astype("<f2").tobytes())
    return struct.pack("<I", TAG_FP32) + encode_raw(array)


def encode_raw(array: np.ndarray) -> bytes:
    """Encode a raw float32 array, flushing denormals to zero as ModelWriter does."""
    values = np.asarray(array, dtype="<f4").copy()
    values[np.abs(values) < 1e-30] = 0.0
    return values.tobytes()


def _padded(blob: bytes) -> bytes:
    return blob + b"\0" * (_align4(len(blob)) - len(blob))
