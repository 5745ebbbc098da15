"""Issue 43: a user's detector, as an ONNX file (or a torch module), pruned and distilled without labels.

The detectors here are edgekit's strangers: two architectures written in another style (tests/foreign_arch:
YOLOv8-style C2f/SPPF/DFL and YOLOv5-style C3/anchors) and the trained reference handed over as an ONNX
file alone. Nothing of edgekit's own model interface is used: only the file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgekit.cli import main
from tests.foreign_arch import V5Det, V8Det

torch = pytest.importorskip("torch")

SHAPE = (1, 3, 160, 160)


def _export(model, path):
    from edgekit.export.onnx import export_onnx

    torch.manual_seed(0)
    return export_onnx(model.eval(), SHAPE, path)


@pytest.fixture(scope="module")
def reference_onnx(tmp_path_factory, trained):
    """The trained reference detector as a user would hand it over: an ONNX file and nothing else."""
    return _export(trained.model, tmp_path_factory.mktemp("user") / "detector.onnx")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, shapes_root):
    """60 unlabelled images (a user's photo folder): 48 train the distillation, 12 are held back."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((shapes_root / "images" / "val").iterdir())[:60]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize(("arch", "head"), [(V8Det, "yolov8"), (V5Det, "yolov5")])
def test_foreign_architectures_import_prune_and_export_with_their_own_io(arch, head, tmp_path):
    from edgekit.compress.graph import CRITERIA, prune_plan, uniform_plan
    from edgekit.export.onnx import model_macs_params, ort_session
    from edgekit.models.foreign import export_foreign, load_foreign
    from edgekit.models.user import inspect_onnx

    torch.manual_seed(0)
    original = arch().eval()
    path = _export(original, tmp_path / "user.onnx")
    det = inspect_onnx(path)
    assert det.head == head
    model = load_foreign(path, det.head)
    x = torch.rand(2, *SHAPE[1:])  # a batch, though the file was exported for one image
    with torch.no_grad():
        ref, got = original(x), model(x)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    before = model_macs_params(model, SHAPE)
    prune_plan(model, uniform_plan(model, 0.2, 8, SHAPE), CRITERIA["l1"](), SHAPE)
    after = model_macs_params(model, SHAPE)
    assert before["macs"] / after["macs"] >= 1.5 and before["params"] / after["params"] >= 1.5
    out, maps = model.forward_with_maps(x)
    assert tuple(out.shape) == tuple(ref.shape) and maps  # the head's layout survives pruning
    out.abs().mean().backward()
    export_foreign(model, tmp_path / "pruned.onnx")
    theirs, ours = ort_session(path), ort_session(tmp_path / "pruned.onnx")
    io = lambda s: ([(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()])  # noqa: E731
    assert io(ours) == io(theirs)
    with torch.no_grad():
        expected = model(x[:1]).numpy()
    assert (
        np.abs(ours.run(None, {"images": x[:1].numpy()})[0] - expected).max() <= 1e-4 * np.abs(expected).max()
    )


def test_label_free_distillation_recovers_teacher_agreement(reference_onnx, train_split, val_split, tmp_path):
    """Pruned, the model loses agreement with its unpruned self; distillation without labels wins it back."""
    from edgekit.compress.context import CompressContext, evaluate_map
    from edgekit.compress.graph import CRITERIA, prune_plan, uniform_plan
    from edgekit.compress.recipe import FinetuneSpec
    from edgekit.data.unlabelled import teacher_labelled
    from edgekit.models.foreign import load_foreign
    from edgekit.models.train import InMemorySplit, torch_candidates

    teacher = load_foreign(reference_onnx, "yolov5")
    held = InMemorySplit.__new__(InMemorySplit)
    held.__dict__.update(val_split.__dict__)
    agreement = teacher_labelled(held, torch_candidates(teacher, held), val_split.num_classes)
    assert evaluate_map(teacher, agreement)["map50"] > 0.99  # the teacher agrees with itself

    import copy

    from edgekit.compress.finetune import finetune

    student = copy.deepcopy(teacher)
    prune_plan(student, uniform_plan(student, 0.3, 8, SHAPE), CRITERIA["l1"](), SHAPE)
    pruned = evaluate_map(student, agreement)
    train = InMemorySplit.__new__(InMemorySplit)
    train.__dict__.update(train_split.__dict__)
    ctx = CompressContext(train, agreement, val_split.spec, tmp_path, teacher=teacher, progress=False)
    stats = finetune(student, FinetuneSpec(epochs=1.0, lr=3e-3, batch_size=32), ctx)
    assert stats["steps"] > 0
    recovered = evaluate_map(student, agreement)
    assert recovered["map50"] >= pruned["map50"] + 0.05, (pruned, recovered)


def _deploy(tmp_path, *extra):
    return [
        "deploy", "--quiet", "--target", "local", "--device", "local", "--epochs-scale", "0.05",
        "--out", str(tmp_path / "runs"), "--calib-root", str(tmp_path / "calibration"), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_user_onnx_deploys_with_the_default_recipe_and_no_labels(
    tmp_path, capsys, reference_onnx, image_folder
):
    """`make deploy MODEL=their.onnx`: no flag to find; the metric is teacher agreement, named so."""
    code = main(
        _deploy(tmp_path, "--model", str(reference_onnx), "--images", str(image_folder), "--run-id", "u")
    )
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "u"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "teacher_agreement" and summary["recipe"] == "default"
    assert summary["reference"]["map50"] > 0.99  # the FP32 original against its own detections
    assert summary["reference"]["macs"] / summary["deployed"]["macs"] >= 1.5
    record = json.loads((run / "record.json").read_text())
    stages = [n["stage"] for n in record["nodes"]]
    assert stages[:4] == ["data", "model", "teacher labels", "reference"] and "compress:prune" in stages
    prune = next(n for n in record["nodes"] if n["stage"] == "compress:prune")
    assert {"params", "macs", "map50", "map50_95"} <= set(prune["metrics"])
    # INT8 on the device keeps what the compressed float model agreed on
    assert summary["deployed"]["map50"] >= prune["metrics"]["map50"] - 0.1
    from edgekit.export.onnx import ort_session

    theirs, ours = ort_session(reference_onnx), ort_session(run / "model_fp32.onnx")
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    assert [o.shape for o in ours.get_outputs()] == [o.shape for o in theirs.get_outputs()]
    assert "teacher agreement" in (run / "report.md").read_text()
    assert "mAP@0.5" not in (run / "report.md").read_text().split("## Reference against deployed")[1][:600]


@pytest.mark.slow
def test_a_torch_module_takes_the_same_route(tmp_path, capsys, image_folder, monkeypatch):
    """module:factory with nothing but forward: exported, imported, pruned, distilled, deployed."""
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    # the module is untrained (its INT8 would rightly be refused): the float build of the default's pruning
    target = tmp_path / "fp32.yaml"
    target.write_text(
        (REPO / "targets" / "local.yaml").read_text().replace("precision: int8", "precision: fp32")
    )
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(
        "name: prune-only\nsteps:\n  - type: prune\n    method: l1\n    ratio: 0.2\n"
        "    finetune: {epochs: 20.0, lr: 0.003, distill: 1.0}\n"
    )
    code = main(
        _deploy(
            tmp_path,
            "--model",
            "tests.foreign_arch:V8Det",
            "--images",
            str(image_folder),
            "--run-id",
            "t",
            "--recipe",
            str(recipe),
            "--target",
            str(target),
        )  # fmt: skip
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert summary["metric"] == "teacher_agreement" and summary["deployed"]["map50"] is not None
    assert summary["reference"]["macs"] / summary["deployed"]["macs"] >= 1.5


# -- bad input: one clear error each, nothing left behind ----------------------------------------------


def _refused(capsys, tmp_path, *argv) -> str:
    code = main(_deploy(tmp_path, *argv))
    err = capsys.readouterr().err
    assert code != 0 and "error:" in err and "hint:" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    return err


def test_a_quantized_onnx_is_refused_for_pruning(tmp_path, capsys, reference_onnx, shapes_root):
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": np.random.default_rng(0).random(SHAPE, np.float32)}])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(reference_onnx), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    err = _refused(capsys, tmp_path, "--model", str(qdq))
    assert "already quantized" in err and "float ONNX" in err and "--recipe none" in err


def test_an_op_the_importer_lacks_is_named_with_its_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.core.errors import ModelError
    from edgekit.models.foreign import load_foreign

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="conv"),
        helper.make_node("CumSum", ["c", "axis"], ["output"], name="my_cumsum"),
    ]
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], [w, axis],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="CumSum.*my_cumsum"):
        load_foreign(tmp_path / "m.onnx", "yolov5")


def test_a_graph_without_a_conv_head_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekit.core.errors import ModelError
    from edgekit.models.foreign import load_foreign

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["images"], ["output"], name="s")], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="no prediction convs"):
        load_foreign(tmp_path / "m.onnx", "yolov5")


def test_data_with_other_classes_is_refused_at_plan_time(tmp_path, capsys, shapes_root):
    path = _export(V8Det(nc=3), tmp_path / "three.onnx")
    err = _refused(capsys, tmp_path, "--model", str(path), "--data", str(shapes_root))
    assert "predicts 3 classes" in err and "has 6" in err and "--images" in err


def test_a_step_that_cannot_apply_is_refused_before_anything_trains(tmp_path, capsys, reference_onnx):
    err = _refused(capsys, tmp_path, "--model", str(reference_onnx), "--recipe", "microyolo")
    assert "step 0 'swap' cannot apply" in err and "blocks" in err and "--recipe" in err


def test_too_few_images_name_the_minimum(tmp_path, capsys, reference_onnx, image_folder):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(image_folder.iterdir())[:10]:
        shutil.copy(path, few / path.name)
    err = _refused(capsys, tmp_path, "--model", str(reference_onnx), "--images", str(few))
    assert "holds 10 images" in err and "at least 40" in err


def test_edgekit_compress_writes_the_users_onnx_back(tmp_path, capsys, reference_onnx, image_folder):
    from edgekit.export.onnx import ort_session

    out = tmp_path / "c"
    argv = [
        "compress",
        "--model",
        str(reference_onnx),
        "--images",
        str(image_folder),
        "--epochs-scale",
        "0.05",
    ]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-back images" in printed and "mAP50" not in printed
    theirs, ours = ort_session(reference_onnx), ort_session(out / "model.onnx")
    assert [(o.name, o.shape) for o in ours.get_outputs()] == [
        (o.name, o.shape) for o in theirs.get_outputs()
    ]
    record = json.loads((out / "record.json").read_text())
    node = record["nodes"][0]
    assert (
        node["stage"] == "compress:prune" and node["metrics"]["macs"] < 0.7 * node["extra"]["before"]["macs"]
    )


def test_slimming_gates_are_exact_and_fold_back_into_the_users_convs(tmp_path):
    """Slimming a user's model: gates (gamma 1, beta 0) change nothing; trained, they fold back exactly."""
    from edgekit.compress.graph import prunable_convs
    from edgekit.compress.slimming import ChannelScale, fold_scales, gated_bns, insert_scales
    from edgekit.models.foreign import load_foreign

    model = load_foreign(_export(V8Det(), tmp_path / "u.onnx"), "yolov8").eval()
    x = torch.rand(2, *SHAPE[1:])
    with torch.no_grad():
        ref = model(x)
    prunable = prunable_convs(model, SHAPE)
    inserted = insert_scales(model, SHAPE)
    assert inserted == len(prunable) > 0  # one gate per prunable conv, none on the head
    assert len(gated_bns(model, SHAPE)) > 0  # torch-pruning sees the gates as the convs' BN
    with torch.no_grad():
        assert torch.equal(model(x), ref)
        for gate in (m for m in model.modules() if isinstance(m, ChannelScale)):
            gate.weight.uniform_(0.5, 1.5)
            gate.bias.uniform_(-0.1, 0.1)
        gated = model(x)
    assert fold_scales(model) == inserted
    assert not any(isinstance(m, ChannelScale) for m in model.modules())
    with torch.no_grad():
        assert (model(x) - gated).abs().max() <= 1e-4 * gated.abs().max()


@pytest.mark.parametrize("recipe", ["slim", "qat"])
def test_slimming_and_qat_run_on_a_users_onnx(recipe, tmp_path, capsys, reference_onnx, image_folder):
    """Every recipe that makes sense runs on a foreign model; what comes out keeps the user's I/O."""
    import onnx

    from edgekit.export.onnx import ort_session

    out = tmp_path / "c"
    argv = ["compress", "--model", str(reference_onnx), "--images", str(image_folder), "--recipe", recipe]
    assert main([*argv, "--epochs-scale", "0.05", "--out", str(out), "--quiet"]) == 0, capsys.readouterr()
    record = json.loads((out / "record.json").read_text())
    first = record["nodes"][0]
    assert first["metrics"]["macs"] < 0.8 * first["extra"]["before"]["macs"]
    theirs = ort_session(reference_onnx)
    written = ["model.onnx", "model_int8.onnx"] if recipe == "qat" else ["model.onnx"]
    for name in written:
        ours = ort_session(out / name)
        assert [(o.name, o.shape) for o in ours.get_outputs()] == [
            (o.name, o.shape) for o in theirs.get_outputs()
        ]
        ops = {n.op_type for n in onnx.load(str(out / name)).graph.node}
        assert ("QuantizeLinear" in ops) == (name == "model_int8.onnx")
        assert "BatchNormalization" not in ops  # slimming's gates are folded back into the convs
    if recipe == "slim":
        assert first["extra"]["inserted_scales"] > 0
    else:
        assert record["nodes"][-1]["extra"]["quantized_convs"] > 0


def test_with_labels_the_fine_tune_adds_the_detection_loss(tmp_path, capsys, reference_onnx, shapes_root):
    """--data: the metric is mAP, and the distillation gets the labels' detection loss beside it."""
    from edgekit.compress.finetune import FOREIGN_DETECTION_WEIGHT

    out = tmp_path / "c"
    argv = ["compress", "--model", str(reference_onnx), "--data", str(shapes_root), "--epochs-scale", "0.05"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0, capsys.readouterr()
    assert "mAP50" in capsys.readouterr().out
    prune = json.loads((out / "record.json").read_text())["nodes"][0]
    assert prune["extra"]["train"]["detection"] == FOREIGN_DETECTION_WEIGHT > 0
    assert prune["metrics"]["map50"] > 0.3  # the pruned model still detects the labelled shapes
