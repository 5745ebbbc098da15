"""A user's detector, brought in as a float ONNX, as a torch module the compression steps can prune and train.

The graph becomes an :class:`~edgekit.export.onnx_torch.OnnxModule` with ``nn.Conv2d`` layers holding the
exported (BN-folded) weights. The prediction convs (the last convs before the decode, found on the graph)
are what the steps keep whole: their output channels are the head's layout. Nothing else is asked of the
model: no loss, no strides, no anchors. Recovery after pruning is distillation from the unpruned model on
the prediction convs' raw maps (:func:`edgekit.compress.distill.raw_map_distill_loss`), so no labels are
needed. :func:`export_foreign` writes the compressed module back with the user's input and output names
and metadata, so every later stage takes it as it took the original.

A torch ``module:factory`` model takes the same route: it is exported to ONNX first (:func:`from_torch`).

Example:
    >>> det = load_foreign("yolov8n.onnx", head="yolov8")  # doctest: +SKIP
    >>> out, maps = det.forward_with_maps(torch.zeros(det.input_shape))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.core.errors import ModelError

#: Ops that mean the file is already quantized (pruning needs the float model).
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "QLinearMatMul", "DynamicQuantizeLinear"}  # fmt: skip


class ForeignDetector(nn.Module):
    """A float ONNX detector as a trainable, prunable torch module.

    Attributes:
        net: The imported graph (its ``forward`` returns every graph output, in order).
        head_layout: How the first output is read (``yolov5``, ``yolov8``, ``yolox``).
        input_shape: The static batch-1 input shape.
        metadata: The file's ``metadata_props`` (class names, image size), written back on export.
    """

    def __init__(self, proto: Any, head: str) -> None:
        super().__init__()
        from edgekit.export.onnx_torch import OnnxModule
        from edgekit.quantize.graph import ensure_node_names, prediction_convs

        proto = ensure_node_names(proto)
        quantized = sorted({n.op_type for n in proto.graph.node} & QUANTIZED_OPS)
        if quantized:
            raise ModelError(
                f"the model is already quantized ({', '.join(quantized)} nodes); pruning and distillation "
                "train float weights",
                "give the float ONNX the model was quantized from (or --recipe none to deploy it as it is)",
            )
        heads = set(prediction_convs(proto))
        if not heads:
            raise ModelError(
                "no prediction convs found: no Conv reaches the graph's output without passing another "
                "Conv, so the head to keep whole is unknown",
                "give a YOLO-family detector whose head ends in convolutions (or --recipe none)",
            )
        try:
            self.net = OnnxModule(proto, trainable=True)
        except ModelError as exc:  # the importer's own hint speaks of converters; this is about compressing
            raise ModelError(
                exc.message, "compressing needs every op imported; --recipe none deploys the file as it is"
            ) from exc
        self.head_layout = head
        self.input_shape = (1, *[d.dim_value for d in _image_input(proto).type.tensor_type.shape.dim][1:])
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=17)
        self.prediction_keys = [k for k in self.net.convs if self.net.conv_node(k) in heads]
        sliced = _channel_sliced_convs(proto)
        self.pinned_keys = [k for k in self.net.convs if self.net.conv_node(k) in sliced]
        if len(self.prediction_keys) != len(heads):
            raise ModelError(
                f"{len(heads) - len(self.prediction_keys)} prediction conv(s) have weights computed at run "
                "time, so they cannot be kept whole",
                "export the model with constant weights (the default of every YOLO exporter)",
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's first output, as its file computes it."""
        return self.net(x)[0]

    def prediction_layers(self) -> list[nn.Conv2d]:
        """Convs never pruned: the prediction convs (the head's layout) and those cut by channel slices."""
        return [self.net.convs[k] for k in self.prediction_keys + self.pinned_keys]

    def head_convs(self) -> list[nn.Module]:
        """The prediction convs alone: what quantization-aware training keeps in float."""
        return [self.net.convs[k] for k in self.prediction_keys]

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The first output and the prediction convs' raw maps, in the order the graph computes them."""
        maps: list[torch.Tensor] = []
        heads = [self.net.convs[k] for k in self.prediction_keys]
        handles = [c.register_forward_hook(lambda _m, _i, out: maps.append(out)) for c in heads]
        try:
            out = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        return out, maps


def _channel_sliced_convs(proto: Any) -> set[str]:
    """Convs whose output (through elementwise ops) is cut by a ``Slice`` / unequal ``Split`` on channels.

    Pruning cannot follow a cut at fixed channel offsets, so these convs keep their outputs. (An equal
    ``Split`` after a conv was already rewritten into one conv per part by the importer.)
    """
    import onnx

    from edgekit.export.onnx_prunable import ELEMENTWISE
    from edgekit.quantize.graph import tensor_producers

    producers, pinned = tensor_producers(proto.graph), set()
    for node in proto.graph.node:
        if node.op_type not in ("Slice", "Split", "Gather"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Slice" and attrs.get("axis", 0) != 1:
            continue
        stack, seen = [node.input[0]], set()
        while stack:
            producer = producers.get(stack.pop())
            if producer is None or producer.name in seen:
                continue
            seen.add(producer.name)
            if producer.op_type == "Conv":
                pinned.add(producer.name)
            elif producer.op_type in ELEMENTWISE:
                stack.extend(i for i in producer.input if i)
    return pinned


def _image_input(proto: Any) -> Any:
    init = {t.name for t in proto.graph.initializer}
    return next(i for i in proto.graph.input if i.name not in init)


def load_foreign(source: str | Path | Any, head: str) -> ForeignDetector:
    """Import a float ONNX detector (a path or a proto, static input shape) as a :class:`ForeignDetector`.

    Raises:
        ModelError: A quantized graph, an op the importer lacks (named with its node), no prediction convs.
    """
    from edgekit.export.onnx import load_checked

    proto = load_checked(Path(source)) if isinstance(source, (str, Path)) else source
    model = ForeignDetector(proto, head)
    if isinstance(source, (str, Path)):
        from edgekit.core.files import sha256_file

        model.source_sha256 = sha256_file(source)
    return model


def static_proto(detector: Any) -> Any:
    """The proto of a user's :class:`~edgekit.models.user.OnnxDetector`, its input made static if needed."""
    import tempfile

    from edgekit.export.onnx import load_checked
    from edgekit.models.user import static_copy

    if detector.static:
        return load_checked(detector.path)
    with tempfile.TemporaryDirectory() as tmp:
        return load_checked(static_copy(detector, Path(tmp) / "static.onnx"))


def from_torch(model: nn.Module, input_shape: tuple[int, ...], head: str, path: Path) -> ForeignDetector:
    """A user's torch module exported to ONNX at ``path`` (its only interface: ``forward``), then imported."""
    from edgekit.export.onnx import export_onnx

    export_onnx(model, input_shape, path)
    return load_foreign(path, head)


def export_foreign(model: ForeignDetector, path: str | Path) -> Path:
    """Write the (compressed) module as ONNX with the user's input / output names and metadata.

    Returns:
        The written path (atomic).
    """
    import onnx

    from edgekit.core.files import atomic_write_bytes
    from edgekit.export.onnx import export_onnx

    path = Path(path)
    tmp = path.with_name(path.stem + ".export.tmp.onnx")
    try:
        with warnings.catch_warnings():  # the trace sees the importer's shape checks; its shapes are static
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            export_onnx(
                model.net, model.input_shape, tmp, opset=max(model.opset, 13),
                input_name=model.net.input_name, output_name=list(model.net.output_names),
            )  # fmt: skip
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    del proto.metadata_props[:]
    for key, value in {**model.metadata, "edgekit": "compressed"}.items():
        proto.metadata_props.add(key=key, value=value)
    return atomic_write_bytes(path, proto.SerializeToString())
