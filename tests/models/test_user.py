"""Users' own models: head detection, ONNX inspection, torch ``module:factory`` loading."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.core.errors import ConfigError, ModelError
from edgekit.core.registry import get_backend
from edgekit.data.preprocess import PreprocessSpec
from edgekit.export.onnx import export_onnx, ort_session
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
from edgekit.models.user import (
    detect_head,
    inspect_onnx,
    load_torch_model,
    parse_names,
    static_copy,
)

NAMES = ["circle", "rectangle", "triangle", "diamond", "cross", "ring"]


class Rows(nn.Module):
    """A tiny detector-shaped net: ``[1, n, channels]`` rows (yolov5) or ``[1, channels, n]`` (yolov8)."""

    def __init__(self, channels: int, n: int, layout: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.n, self.layout = n, layout

    def forward(self, x):
        y = self.conv(x).flatten(2)[..., : self.n].sigmoid() * 32  # [1, channels, n]
        return y if self.layout == "yolov8" else y.transpose(1, 2)


class TwoOutputs(Rows):
    def forward(self, x):
        return super().forward(x), x.mean((2, 3))


def _export(model: nn.Module, path: Path, size: int = 32, **meta: str) -> Path:
    torch.manual_seed(0)
    export_onnx(model, (1, 3, size, size), path)
    if meta:
        proto = onnx.load(str(path))
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
    return path


def _set_dims(path: Path, dst: Path, input_dims: dict[int, str], output_dims: dict[int, str]) -> Path:
    """Make some dims symbolic, as an export with dynamic axes would."""
    proto = onnx.load(str(path))
    for value_info, wanted in ((proto.graph.input[0], input_dims), (proto.graph.output[0], output_dims)):
        for index, name in wanted.items():
            dim = value_info.type.tensor_type.shape.dim[index]
            dim.Clear()
            dim.dim_param = name
    onnx.save(proto, str(dst))
    return dst


# -- detect_head -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "head"),
    [
        ([1, 25200, 85], "yolov5"),
        ([1, 84, 8400], "yolov8"),
        ([1, 500, 11], "yolov5"),
        ([1, 10, 500], "yolov8"),
        (["batch", "boxes", 11], "yolov5"),  # symbolic box axis
        (["batch", 84, "anchors"], "yolov8"),
    ],
)
def test_detect_head_reads_the_layout_from_the_shape(shape, head):
    assert detect_head(shape) == head


def test_detect_head_uses_num_classes_to_disambiguate():
    # [1, 12, 11]: yolov5 reading = 6 classes over 12 boxes, yolov8 reading = 8 classes over 11 boxes.
    with pytest.raises(ModelError, match=r"--head yolov5 or --head yolov8") as err:
        detect_head([1, 12, 11])
    assert "[1, 12, 11]" in err.value.message
    assert detect_head([1, 12, 11], num_classes=6) == "yolov5"
    assert detect_head([1, 12, 11], num_classes=8) == "yolov8"
    with pytest.raises(ModelError, match="does not hold 3 classes"):
        detect_head([1, 12, 11], num_classes=3)


@pytest.mark.parametrize("shape", [[1, 1000], [1, 3, 20, 20], [1, 4000, 5], [1, 4, 4000]])
def test_detect_head_rejects_non_detector_shapes(shape):
    with pytest.raises(ModelError, match=r"yolov5 \[1, N, 5 \+ nc\].*yolov8 \[1, 4 \+ nc, N\]"):
        detect_head(shape)


# -- inspect_onnx ------------------------------------------------------------------------------------


def test_inspect_reads_head_classes_names_and_preprocessing(tmp_path):
    names = "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(NAMES)) + "}"
    v8 = inspect_onnx(_export(Rows(10, 64, "yolov8"), tmp_path / "v8.onnx", names=names, task="detect"))
    v5 = inspect_onnx(_export(Rows(11, 64, "yolov5"), tmp_path / "v5.onnx"))
    assert (v8.head, v8.num_classes, v8.class_names) == ("yolov8", 6, NAMES)
    assert (v5.head, v5.num_classes, v5.class_names) == ("yolov5", 6, [f"class{i}" for i in range(6)])
    for det in (v5, v8):
        assert det.input_shape == [1, 3, 32, 32] and det.static and det.notes == []
        assert det.preprocess == PreprocessSpec(input_size=32)  # letterbox 114, RGB, mean 0, std 1
        assert (det.input_name, det.output_name) == ("images", "output")
    assert inspect_onnx(v5.path, class_names=NAMES).class_names == NAMES
    with pytest.raises(ConfigError, match="2 class names given but the output .* holds 6"):
        inspect_onnx(v5.path, class_names=["a", "b"])


def test_inspect_builds_an_artifact_that_carries_head_and_names(tmp_path):
    det = inspect_onnx(_export(Rows(10, 64, "yolov8"), tmp_path / "v8.onnx"), class_names=NAMES)
    art = get_backend("onnxruntime").build(det.path, det.build_options(threads=1), tmp_path / "art")
    out = art.meta["output"]
    assert (out["head"], out["num_classes"], out["class_names"]) == ("yolov8", 6, NAMES)
    assert art.preprocess == det.preprocess


def test_inspect_takes_the_first_of_several_outputs_with_a_warning(tmp_path):
    path = _export(TwoOutputs(11, 64, "yolov5"), tmp_path / "two.onnx")
    with pytest.warns(UserWarning, match="has 2 outputs; using the first, 'output'"):
        det = inspect_onnx(path)
    assert (det.output_name, det.output_shape, det.head) == ("output", [1, 64, 11], "yolov5")


def test_inspect_asks_for_head_on_an_ambiguous_shape_and_accepts_it(tmp_path):
    path = _export(Rows(11, 12, "yolov5"), tmp_path / "amb.onnx")
    with pytest.raises(ModelError, match="--head") as err:
        inspect_onnx(path)
    assert "[1, 12, 11]" in err.value.message
    assert inspect_onnx(path, head="yolov5").num_classes == 6
    assert inspect_onnx(path, head="yolov8").num_classes == 8
    with pytest.raises(ConfigError, match="unknown head 'ssd'"):
        inspect_onnx(path, head="ssd")


def test_inspect_rejects_non_detector_outputs_naming_the_shape(tmp_path):
    class Classifier(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).repeat(1, 100)

    path = _export(Classifier(), tmp_path / "cls.onnx")
    with pytest.raises(ModelError, match=r"\[1, 300\] is not a detector output; expected yolov5"):
        inspect_onnx(path)


def test_inspect_rejects_segmentation_and_mismatched_names(tmp_path):
    seg = _export(Rows(11, 64, "yolov5"), tmp_path / "seg.onnx", task="segment")
    with pytest.raises(ModelError, match="'segment' model"):
        inspect_onnx(seg)
    three = _export(Rows(11, 64, "yolov5"), tmp_path / "three.onnx", names="{0: 'a', 1: 'b', 2: 'c'}")
    with pytest.raises(ModelError, match="names 3 classes in its metadata but its output holds 6"):
        inspect_onnx(three)


def test_inspect_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        inspect_onnx(tmp_path / "nope.onnx")
    good = _export(Rows(11, 64, "yolov5"), tmp_path / "good.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        inspect_onnx(tmp_path / "cut.onnx")


def test_dynamic_batch_resolves_to_one_and_dynamic_size_needs_input_size(tmp_path):
    src = _export(Rows(11, 64, "yolov5"), tmp_path / "src.onnx")
    with pytest.warns(UserWarning, match="dynamic input"):
        batch = inspect_onnx(_set_dims(src, tmp_path / "b.onnx", {0: "batch"}, {0: "batch"}))
    assert batch.input_shape == [1, 3, 32, 32] and not batch.static
    assert "resolved to [1, 3, 32, 32]" in batch.notes[0]

    dyn = _set_dims(src, tmp_path / "hw.onnx", {0: "b", 2: "h", 3: "w"}, {0: "b", 1: "boxes"})
    with pytest.raises(ModelError, match="dynamic input size") as err:
        inspect_onnx(dyn)
    assert "--input-size" in err.value.hint
    with pytest.warns(UserWarning, match=r"dynamic input \['b', 3, 'h', 'w'\] resolved to \[1, 3, 32, 32\]"):
        det = inspect_onnx(dyn, input_size=32)
    assert (det.input_shape, det.head, det.num_classes) == ([1, 3, 32, 32], "yolov5", 6)

    fixed = inspect_onnx(static_copy(det, tmp_path / "fixed.onnx"))
    assert fixed.static and fixed.output_shape == [1, 64, 11]
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    want = ort_session(src).run(None, {"images": x})[0]
    np.testing.assert_allclose(ort_session(fixed.path).run(None, {"images": x})[0], want, rtol=0, atol=0)


def test_imgsz_metadata_fills_a_dynamic_size(tmp_path):
    src = _export(Rows(11, 64, "yolov5"), tmp_path / "src.onnx", imgsz="[32, 32]")
    dyn = _set_dims(src, tmp_path / "hw.onnx", {2: "h", 3: "w"}, {})
    with pytest.warns(UserWarning, match="resolved"):
        assert inspect_onnx(dyn).input_shape == [1, 3, 32, 32]


def test_parse_names_accepts_literals_only():
    assert parse_names("{0: 'person', 1: 'bicycle'}") == ["person", "bicycle"]
    assert parse_names("['a', 'b']") == ["a", "b"]
    assert parse_names("{1: 'a', 2: 'b'}") is None  # keys must be 0..n-1
    assert parse_names("__import__('os').system('echo pwned')") is None
    assert parse_names("{0: 'a'") is None


# -- load_torch_model --------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user package in tmp_path (found through the current folder), with a factory and some traps."""
    name = f"userdet_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "models.py").write_text(
        textwrap.dedent(
            """
            from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

            NOT_CALLABLE = 3

            def build(num_classes=6, width=0.5):
                return TinyYolo(TinyYoloConfig(num_classes=num_classes, width=width))

            def broken():
                raise ValueError("no such backbone")

            def not_a_module():
                return {"weights": 1}

            class Factory:
                @staticmethod
                def create():
                    return build()
            """
        )
    )
    (tmp_path / name / "needs_missing.py").write_text("import package_that_is_not_installed_xyz\n")
    monkeypatch.chdir(tmp_path)
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)


def _reference(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(3)
    model = TinyYolo(TinyYoloConfig(num_classes=6, width=0.5)).eval()
    with torch.no_grad():  # non-default BN statistics, so loading buffers is checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_load_torch_model_builds_loads_weights_and_matches(tmp_path, user_module):
    ref, weights = _reference(tmp_path)
    model = load_torch_model(f"{user_module}.models:build", weights, {"num_classes": 6})
    assert not model.training
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    via_class = load_torch_model(f"{user_module}.models:Factory.create", weights)
    with torch.no_grad():
        assert torch.equal(via_class(x), ref(x))
    assert str(tmp_path) not in sys.path  # the current folder is only added for the import


def test_load_torch_model_accepts_a_checkpoint_dict(tmp_path, user_module):
    ref, weights = _reference(tmp_path)
    torch.save({"epoch": 3, "state_dict": ref.state_dict()}, tmp_path / "ckpt.pt")
    model = load_torch_model(f"{user_module}.models:build", tmp_path / "ckpt.pt")
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_load_torch_model_names_mismatched_keys(tmp_path, user_module):
    ref, weights = _reference(tmp_path)
    spec = f"{user_module}.models:build"
    mismatch = r"shape mismatch: .*pred8.weight \[11, 32, 1, 1\] vs \[8, 32, 1, 1\]"
    with pytest.raises(ModelError, match=mismatch):
        load_torch_model(spec, weights, {"num_classes": 3})
    state = ref.state_dict()
    del state["pred8.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ModelError, match=r"missing keys: pred8.bias \(1\); unexpected keys: extra.weight"):
        load_torch_model(spec, tmp_path / "edited.pt")
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "dp.pt")
    with pytest.raises(ModelError, match="missing keys") as err:
        load_torch_model(spec, tmp_path / "dp.pt")
    assert "DataParallel" in err.value.hint


def test_load_torch_model_refuses_pickled_objects_and_missing_files(tmp_path, user_module):
    spec = f"{user_module}.models:build"
    torch.save({"model": TinyYolo(TinyYoloConfig(width=0.5))}, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="cannot load .*whole.pt as a state dict") as err:
        load_torch_model(spec, tmp_path / "whole.pt")
    assert "state_dict()" in err.value.hint
    with pytest.raises(ModelError, match="weights file .*absent.pt not found"):
        load_torch_model(spec, tmp_path / "absent.pt")


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no_colon_here", ConfigError, r"not 'package.module:factory'"),
        ("pkg.mod:", ConfigError, r"not 'package.module:factory'"),
        ("1pkg:build", ConfigError, r"not 'package.module:factory'"),
        ("{mod}.nowhere:build", ConfigError, r"cannot find module '{mod}.nowhere'"),
        ("{mod}.models:missing", ConfigError, r"has no 'missing'"),
        ("{mod}.models:NOT_CALLABLE", ConfigError, r"is a int, not callable"),
        ("{mod}.models:broken", ModelError, r"raised ValueError: no such backbone"),
        ("{mod}.models:not_a_module", ModelError, r"returned dict, not a torch.nn.Module"),
        ("{mod}.needs_missing:build", ModelError, r"importing '{mod}.needs_missing' failed"),
    ],
)
def test_bad_specs_raise_clear_errors(user_module, spec, error, match):
    with pytest.raises(error, match=match.format(mod=user_module)) as err:
        load_torch_model(spec.format(mod=user_module))
    assert err.value.hint


def test_missing_attribute_error_lists_the_callables(user_module):
    with pytest.raises(ConfigError) as err:
        load_torch_model(f"{user_module}.models:buidl")
    assert "build" in err.value.hint and "broken" in err.value.hint
