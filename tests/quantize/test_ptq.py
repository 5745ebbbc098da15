"""INT8 QDQ quantization with ONNX Runtime on tiny detectors built here (export -> quantize -> run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.core.errors import CalibrationError, ConfigError
from edgekit.export.onnx import export_onnx, ort_session
from edgekit.quantize import graph as qgraph
from edgekit.quantize.ptq import compare_calibrators, quantize_int8, summarize, tensor_ranges
from tests.quantize.conftest import skip_if_saturating

SIZE = 64


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyDetector(nn.Module):
    """Conv backbone -> one 1x1 prediction conv per head -> sigmoid/YOLOv5 decode -> concat [1, N, 5+nc]."""

    def __init__(self, nc: int = 3, heads: int = 2) -> None:
        super().__init__()
        self.backbone = nn.Sequential(cbr(3, 8, 2), cbr(8, 16, 2), cbr(16, 16, 2))
        self.extra = nn.ModuleList([cbr(16, 16, 2) for _ in range(heads - 1)])
        self.preds = nn.ModuleList([nn.Conv2d(16, 5 + nc, 1) for _ in range(heads)])
        self.strides = [8 * 2**i for i in range(heads)]

    @staticmethod
    def decode(p: torch.Tensor, stride: int) -> torch.Tensor:
        b, c, h, w = p.shape
        p = p.permute(0, 2, 3, 1).reshape(b, h * w, c).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([gx, gy], -1).reshape(1, h * w, 2).float()
        xy = (grid + p[..., :2] * 2 - 0.5) * stride
        wh = (p[..., 2:4] * 2) ** 2 * stride * 3
        return torch.cat([xy, wh, p[..., 4:]], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.backbone(x)]
        for block in self.extra:
            feats.append(block(feats[-1]))
        rows = [self.decode(pred(f), s) for pred, f, s in zip(self.preds, feats, self.strides, strict=True)]
        return torch.cat(rows, 1)


def make_detector(heads: int = 2, seed: int = 0) -> TinyDetector:
    """Seeded detector whose BNs carry non-trivial statistics (so folding them into convs matters)."""
    torch.manual_seed(seed)
    model = TinyDetector(heads=heads)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def structured_images(count: int, seed: int) -> list[np.ndarray]:
    """Seeded gradient backgrounds with bright rectangles and noise, 0..1 scale, NCHW float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images = []
    for _ in range(count):
        img = rng.uniform(0, 1, (3, 1, 1)) * xx + rng.uniform(0, 1, (3, 1, 1)) * yy
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, SIZE - 16, 2)
            w, h = rng.integers(6, 16, 2)
            img[:, y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, (3, 1, 1))
        img = img + rng.normal(0, 0.05, img.shape)
        images.append(np.clip(img, 0, 1)[None].astype(np.float32))
    return images


def export_detector(model: nn.Module, path: Path) -> Path:
    return export_onnx(model, (1, 3, SIZE, SIZE), path)


def run(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort_session(path)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_detector(make_detector(heads=2), tmp_path_factory.mktemp("fp32") / "det.onnx")


@pytest.fixture(scope="module")
def calib() -> list[np.ndarray]:
    return structured_images(24, seed=1)


@pytest.fixture(scope="module")
def by_method(
    fp32: Path, calib: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory, reduce_range: bool
) -> dict:
    out = tmp_path_factory.mktemp("int8")
    return {
        m: quantize_int8(fp32, out / f"{m}.onnx", calib, method=m, reduce_range=reduce_range, progress=False)
        for m in ("minmax", "entropy", "percentile")
    }


def test_auto_keep_float_finds_both_prediction_convs(fp32: Path) -> None:
    model = onnx.load(str(fp32))
    assert qgraph.prediction_convs(model) == ["/preds.0/Conv", "/preds.1/Conv"]
    tail = qgraph.decode_tail_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert "Conv" not in {ops[name] for name in tail}
    assert {"Sigmoid", "Concat", "Pow"} <= {ops[name] for name in tail}
    final = next(n.name for n in model.graph.node if "output" in n.output)
    assert final in tail


def test_qdq_structure_keeps_prediction_convs_float(by_method: dict) -> None:
    res = by_method["minmax"]
    qdq = onnx.load(str(res.path))
    ops = Counter(n.op_type for n in qdq.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    producers = {out: n for n in qdq.graph.node for out in n.output}
    convs = {n.name: n for n in qdq.graph.node if n.op_type == "Conv"}
    for name, conv in convs.items():
        weight_from_dq = conv.input[1] in producers and producers[conv.input[1]].op_type == "DequantizeLinear"
        assert weight_from_dq == (name not in ("/preds.0/Conv", "/preds.1/Conv")), name
    assert res.quantized_nodes == 4  # the four backbone convs; MaxPool/Resize absent here
    assert {"/preds.0/Conv", "/preds.1/Conv"} <= set(res.excluded_nodes)
    assert res.calibration_count == 24 and res.size_bytes == res.path.stat().st_size


def test_int8_output_close_to_fp32(fp32: Path, by_method: dict, reduce_range: bool) -> None:
    skip_if_saturating(reduce_range)
    held_out = structured_images(4, seed=99)
    for res in by_method.values():
        for batch in held_out:
            ref, got = run(fp32, batch), run(res.path, batch)
            err = np.abs(got - ref)
            # Boxes are in pixels (range ~60): 1 % of the output range. Scores are probabilities: 0.02.
            assert err[..., :4].max() < 0.01 * (ref.max() - ref.min()), res.method
            assert err[..., 4:].max() < 0.02, res.method


def test_three_methods_give_three_scale_hashes(by_method: dict) -> None:
    hashes = {m: r.scales_sha256 for m, r in by_method.items()}
    assert len(set(hashes.values())) == 3, hashes
    assert compare_calibrators(list(by_method.values())) == []
    # Entropy and percentile clip outliers: their ranges are never wider than MinMax's.
    minmax = by_method["minmax"].scales
    for method in ("entropy", "percentile"):
        scales = by_method[method].scales
        assert scales.keys() == minmax.keys()
        assert all(scales[k][0] <= minmax[k][0] * (1 + 1e-6) for k in minmax)
        assert any(scales[k][0] < minmax[k][0] * 0.95 for k in minmax), method


def test_ort_default_entropy_degenerates_and_the_warning_fires(
    fp32: Path, calib: list[np.ndarray], tmp_path: Path
) -> None:
    """Plain quantize_static(Entropy) in ORT 1.32 equals MinMax; compare_calibrators must say so."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self) -> dict | None:
            item = next(self.items, None)
            return None if item is None else {"images": item}

    results = []
    for method, mode in (("minmax", CalibrationMethod.MinMax), ("entropy", CalibrationMethod.Entropy)):
        out = tmp_path / f"ort-{method}.onnx"
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, calibrate_method=mode)
        results.append(summarize(out, method, 0.0, False, [], len(calib), 0.0))
    if results[0].scales_sha256 != results[1].scales_sha256:
        pytest.skip(reason="this onnxruntime's default Entropy calibrator no longer degenerates to MinMax")
    warnings = compare_calibrators(results)
    assert len(warnings) == 1 and "'entropy' silently degenerated to 'minmax'" in warnings[0]


def test_tensor_ranges_entropy_clips_inside_minmax(fp32: Path, calib: list[np.ndarray]) -> None:
    minmax = tensor_ranges(fp32, calib, "minmax")
    entropy = tensor_ranges(fp32, lambda: iter(calib), "entropy")
    assert minmax.keys() == entropy.keys() and len(minmax) >= 5
    assert all(minmax[k][0] <= entropy[k][0] and entropy[k][1] <= minmax[k][1] + 1e-6 for k in minmax)
    assert any(entropy[k][1] < 0.95 * minmax[k][1] for k in minmax)
    first = np.asarray(calib)
    assert minmax["images"] == pytest.approx((float(first.min()), float(first.max())))


def test_empty_calibration_is_an_error(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.onnx"
    for empty in ([], lambda: iter(())):
        with pytest.raises(CalibrationError, match="calibration set is empty") as info:
            quantize_int8(fp32, out, empty, progress=False)
        assert "image" in info.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_explicit_keep_float_and_unknown_names(fp32: Path, calib: list[np.ndarray], tmp_path: Path) -> None:
    res = quantize_int8(fp32, tmp_path / "q.onnx", calib, keep_float=None, progress=False)
    assert res.excluded_nodes == [] and res.quantized_nodes == 6
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]
    with pytest.raises(ConfigError, match="/nope/Conv"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib, keep_float=["/nope/Conv"], progress=False)
    with pytest.raises(ConfigError, match="unknown calibration method"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib, method="kl", progress=False)


class DflHead(nn.Module):
    """YOLOv8-like: box branch -> softmax -> fixed DFL conv, class branch -> sigmoid; concat [1, 4+nc, N]."""

    def __init__(self, nc: int = 2, reg_max: int = 4) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 2)
        self.box = nn.Conv2d(8, 4 * reg_max, 1)
        self.cls = nn.Conv2d(8, nc, 1)
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        self.reg_max = reg_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        b, _, h, w = f.shape
        box = self.box(f).view(b, 4, self.reg_max, h * w).transpose(2, 1).softmax(1)
        box = self.dfl(box).view(b, 4, h * w)
        return torch.cat([box, self.cls(f).view(b, -1, h * w).sigmoid()], 1)


def test_dfl_conv_is_decode_not_prediction(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_onnx(DflHead().eval(), (1, 3, 32, 32), tmp_path / "v8.onnx")
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert qgraph.prediction_convs(model) == ["/box/Conv", "/cls/Conv"]
    dfl = [name for name in convs if "dfl" in name]
    assert len(dfl) == 1 and dfl[0] in qgraph.decode_tail_nodes(model)
