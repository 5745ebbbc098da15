"""The model-side deploy stages: data, model, reference, compress, export."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.core.errors import ConfigError
from edgekit.core.files import sha256_file
from edgekit.data.dataset import YoloDataset
from edgekit.stages.context import (
    DataResult,
    Exported,
    ModelFacts,
    ModelState,
    RunContext,
    Sources,
    add_node,
    model_stats,
    stage,
)

if TYPE_CHECKING:
    from edgekit.compress.recipe import Recipe
    from edgekit.models.train import InMemorySplit


def float_view(model: Any) -> Any:
    """The float model of a QAT run (see :func:`edgekit.compress.qat.float_view`); others as they are."""
    from edgekit.compress.qat import float_view as _float_view

    return _float_view(model)


PARITY_ATOL = 1e-3  # pixels / probabilities: FP32 ONNX vs torch on real inputs


def data_stage(ctx: RunContext, src: Sources) -> DataResult:
    """Resolve the dataset (built-in shapes set unless ``--data``) and load its val split into memory."""
    from edgekit.data.shapes import ShapesConfig, builtin_dataset
    from edgekit.models.train import InMemorySplit
    from edgekit.models.zoo import cache_dir

    metric = src.metric
    images = Path(src.images) if src.images else None
    with stage(ctx, "data") as fields:
        if images is not None:
            root, config = images, {}
        elif src.data:
            root, config = Path(src.data), {"dataset": str(src.data)}
        else:
            shapes = ShapesConfig(image_size=ctx.spec.input_size)
            root = builtin_dataset(cache_dir(), shapes, progress=ctx.progress)
            config = {"dataset": "builtin shapes", **shapes.__dict__}
        if images is not None:
            from edgekit.data.unlabelled import folder_splits

            train_part, held = folder_splits(images)
            val = InMemorySplit(held, ctx.spec)
            config = {"images": str(images), "train_images": len(train_part), "held_back": len(held)}
        else:
            val = InMemorySplit(YoloDataset(root, "val"), ctx.spec)
    names = () if images is not None else tuple(YoloDataset(root, "val").names)  # a user model's: its own
    if images is not None:
        label = f"{images.name}: {len(val)} held-back images (no labels)"
    else:
        label = f"{root.name}: {len(val)} val images, {len(names)} classes"
    if metric == "teacher_agreement":
        label += "; metric: teacher agreement (no labels for this model)"
    if metric != "map":  # (mAP runs keep their config, and so the compress cache keys made from it)
        config["metric"] = metric
    add_node(ctx, "data", config, fields, label=label, extra={"root": str(root)})
    return DataResult(root, val, names, metric, images)


def model_stage(ctx: RunContext, src: Sources, data: DataResult, trainable: bool = False) -> ModelState:
    """The model to deploy: the cached/trained reference detector, a user torch model, or a user ONNX file.

    With ``trainable`` (the recipe has torch steps) a user ONNX is imported as a torch module
    (:class:`~edgekit.models.foreign.ForeignDetector`); a user torch model without edgekit's detector
    interface always is, after its ONNX export, so every later stage reads its outputs by its head.
    """
    from edgekit.models.zoo import (
        converged_reference,
        reference_detector,
        reference_train_config,
        shipped_dir,
    )

    root, head, names = data.root, None, list(data.class_names)
    extra: dict[str, Any] = {}
    with stage(ctx, "model") as fields:
        if src.model.endswith(".onnx"):
            from edgekit.models.user import inspect_onnx

            det = inspect_onnx(src.model, head=src.head, class_names=None)
            if det.preprocess.input_size != ctx.spec.input_size:
                raise ConfigError(
                    f"{src.model} takes {det.preprocess.input_size} px inputs but target "
                    f"'{ctx.target.name}' is set to {ctx.spec.input_size} px",
                    f"set input_size: {det.preprocess.input_size} in {ctx.target.source}",
                )
            if det.num_classes != len(data.class_names) and data.metric == "map":
                raise ConfigError(
                    f"{src.model} predicts {det.num_classes} classes but the dataset has "
                    f"{len(data.class_names)}",
                    "evaluate it on a dataset with the same classes (--data)",
                )
            if not det.static:
                from edgekit.models.user import static_copy

                det = dataclasses.replace(
                    det, path=static_copy(det, ctx.run_dir / "model_static.onnx"), static=True
                )
            head, names = det.head, det.class_names
            config, label, model = (
                {"onnx": str(src.model), "sha256": sha256_file(src.model)},
                "user ONNX",
                det,
            )
            if trainable:  # compression steps: the graph becomes a torch module they can prune and train
                from edgekit.models.foreign import load_foreign

                model, label = load_foreign(det.path, det.head), "user ONNX, imported as a torch module"
        elif src.model != "builtin":
            from edgekit.models.user import load_torch_model

            model = load_torch_model(src.model, src.weights)
            config, label = {"factory": src.model, "weights": src.weights}, f"user model {src.model}"
            if not is_native(model):  # any other torch detector: exported once, then the ONNX route
                model, head, names = _foreign_from_torch(ctx, src.head, model)
                label += f" (exported and imported; {head} head)"
                if data.metric == "map" and len(names) != len(data.class_names):
                    raise ConfigError(
                        f"{src.model} predicts {len(names)} classes but the dataset has "
                        f"{len(data.class_names)}",
                        "give --data with the model's classes, or leave --data out to measure teacher "
                        "agreement",
                    )
        else:
            if src.reference == "converged" and ctx.epochs_scale == 1.0:
                # the default: the converged reference (shipped, cached, or trained to the plateau rule)
                trained = converged_reference(root, input_size=ctx.spec.input_size, progress=ctx.progress)
                schedule = trained.metrics.get("schedule", {})
                extra = {k: trained.metrics.get(k) for k in ("curve", "epochs", "stopped", "wall_s")}
            else:
                cfg = reference_train_config(ctx.epochs_scale)
                trained = reference_detector(root, cfg, input_size=ctx.spec.input_size, progress=ctx.progress)
                schedule = cfg.to_dict()
            model, config = trained.model, {"train": schedule, "checkpoint_key": trained.key}
            origin = "shipped" if trained.path.parent == shipped_dir() else "cached"
            label = "reference detector (TinyYolo), " + (
                f"loaded ({origin})" if trained.cached else "trained"
            )
            fields["cached"] = trained.cached
            fields["outputs"] = {str(trained.path): sha256_file(trained.path)}
    add_node(
        ctx,
        "train" if src.model == "builtin" else "model",
        config,
        fields,
        label=label,
        **({"extra": extra} if extra else {}),
    )
    if data.metric == "map":
        names = list(data.class_names)
    return ModelState(model, ModelFacts(tuple(names), head))


def is_native(model: Any) -> bool:
    """A torch model with edgekit's detector interface (raw maps, strides, priors: its loss applies)."""
    return (
        hasattr(model, "raw") and hasattr(model, "strides") and hasattr(getattr(model, "cfg", None), "priors")
    )


def _foreign_from_torch(ctx: RunContext, head: str | None, model: Any) -> tuple[Any, str, list[str]]:
    """A user's torch detector as a :class:`~edgekit.models.foreign.ForeignDetector` (via its ONNX export)."""
    from edgekit.export.onnx import export_onnx
    from edgekit.models.foreign import load_foreign
    from edgekit.models.user import inspect_onnx

    path = export_onnx(model, ctx.spec.input_shape(), ctx.run_dir / "model_user.onnx")
    det = inspect_onnx(path, head=head)
    return load_foreign(path, det.head), det.head, det.class_names


def teacher_labels_stage(ctx: RunContext, state: ModelState, data: DataResult) -> DataResult:
    """Without labels: the FP32 model's own detections (score >= 0.25) become the val split's ground truth.

    Raises:
        DataError: The model detects nothing on the held-back images (agreement would mean nothing).
    """
    from edgekit.core.errors import DataError
    from edgekit.data.unlabelled import AGREEMENT_CONF, detections_found, teacher_labelled

    model = state.model
    with stage(ctx, "teacher labels") as fields:
        if isinstance(getattr(model, "path", None), (str, Path)) and hasattr(model, "head"):
            cands = onnx_candidates(Path(model.path), data.val, model.head)
        else:
            from edgekit.models.train import torch_candidates

            cands = torch_candidates(model, data.val)
        val = teacher_labelled(data.val, cands, len(state.facts.class_names))
        found = detections_found(val)
        if not found:
            raise DataError(
                f"the model detects nothing (score >= {AGREEMENT_CONF}) on the {len(val)} held-back images, "
                "so its agreement with a compressed copy cannot be measured",
                "give images of the model's own domain with --images DIR, or a labelled dataset with --data",
            )
    add_node(
        ctx, "teacher labels", {"conf": AGREEMENT_CONF, "images": len(val)}, fields,
        label=f"teacher agreement reference: the FP32 model's {found} detections on {len(val)} held-back "
        "images",
        metrics={"boxes": found},
    )  # fmt: skip
    return dataclasses.replace(data, val=val, class_names=state.facts.class_names)


def onnx_candidates(onnx_path: Path, val: InMemorySplit, head: str) -> list:
    """Candidate rows of an ONNX detector on ``val`` with ONNX Runtime on this host."""
    from edgekit.export.onnx import ort_session
    from edgekit.runners.detcore import candidates

    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    return [candidates(sess.run(None, {name: val.tensor(i)})[0], head) for i in range(len(val))]


def reference_stage(ctx: RunContext, state: ModelState, val: InMemorySplit) -> ModelState:
    """FP32 accuracy and cost of the model before compression, evaluated on this host."""
    from edgekit.models.train import evaluate, map_from_candidates

    model = state.model
    with stage(ctx, "reference") as fields:
        if hasattr(model, "path") and str(getattr(model, "path", "")).endswith(".onnx"):
            from edgekit.export.onnx import onnx_info

            scores = map_from_candidates(val, onnx_candidates(Path(model.path), val, model.head))
            info = onnx_info(model.path)
            stats = {"params": int(info["params"]), "size_bytes": int(info["size_bytes"])}
        else:
            scores, stats = evaluate(model, val), model_stats(model, ctx.spec)
    add_node(
        ctx,
        "reference",
        {"precision": "fp32", "images": len(val)},
        fields,
        label="FP32 reference (host)",
        metrics={**stats, **scores},
    )
    deployed = {k: v for k, v in stats.items() if k in ("params", "macs")}
    return ModelState(model, dataclasses.replace(state.facts, stats=deployed))


def compress_workdir(recipe: Recipe, key: str) -> Path:
    """The cache folder of a recipe's steps (or its control) for the inputs hashed into ``key``."""
    from edgekit.models.zoo import cache_dir

    return cache_dir() / "compress" / f"{recipe.name}-{key}"


def compress_key(ctx: RunContext, recipe: Recipe, model: Any) -> str:
    """What a recipe's result depends on, hashed: the model's content, the data, the input spec, the schedule.

    Not the target: ``make deploy TARGET=rpi4-ncnn`` after ``make deploy TARGET=local`` finds the same
    compressed model instead of fine-tuning it again.
    """
    from edgekit.core.files import stable_hash
    from edgekit.models.train import model_hash

    data = ctx.record.node("data")
    return stable_hash(
        {
            "recipe": recipe.name,
            "model": model_hash(model),
            **({"source": model.source_sha256} if hasattr(model, "source_sha256") else {}),
            "data": data.config if data else None,
            "spec": ctx.spec.model_dump(mode="json"),
            "epochs_scale": ctx.epochs_scale,
        }
    )


def compress_stage(ctx: RunContext, recipe: Recipe, state: ModelState, data: DataResult) -> ModelState:
    """Run the recipe's torch steps (pruning, swaps, distillation, QAT) with per-step nodes."""
    from edgekit.compress.context import CompressContext
    from edgekit.compress.finetune import labelled_detection_weight
    from edgekit.compress.runner import run_recipe

    if not recipe.torch_steps():
        return state
    model = state.model
    with stage(ctx, "compress"):
        train = data.train_split(ctx.spec)
        workdir = compress_workdir(recipe, compress_key(ctx, recipe, model))
        cctx = CompressContext(
            train=train,
            val=data.val,
            spec=ctx.spec,
            workdir=workdir,
            progress=ctx.progress,
            epochs_scale=ctx.epochs_scale,
            detection=labelled_detection_weight(model, data.metric == "map"),
        )
        model, nodes = run_recipe(model, recipe, cctx)
        for node in nodes:
            add_node(ctx, node.pop("stage"), node.pop("config", {}), {}, **node)
    stats = model_stats(float_view(model), ctx.spec)
    deployed = {k: v for k, v in stats.items() if k != "size_bytes"}
    return ModelState(model, dataclasses.replace(state.facts, stats=deployed))


def export_stage(
    ctx: RunContext, state: ModelState, val: InMemorySplit, program: str | None = None
) -> Exported:
    """Torch → ONNX (opset 17) with an FP32 parity check against ONNX Runtime; ONNX inputs are copied.

    With ``program`` (the backend's ``torch_program``) a torch model is also written in that form:
    ``torchscript`` → ``model_fp32.pt`` (pnnx converts a trace more faithfully), ``export-raw`` →
    ``model_raw.pt2`` (a ``torch.export`` program of the raw prediction maps, with its decode beside it).
    """
    from edgekit.export.onnx import (
        check_parity,
        export_onnx,
        export_raw_program,
        export_torchscript,
        onnx_info,
    )

    model, path, ts_path = state.model, ctx.run_dir / "model_fp32.onnx", None
    with stage(ctx, "export") as fields:
        head = None  # set for a user's model: its head, read by the raw-program cut
        if hasattr(model, "forward_with_maps"):  # a user's detector: its own input / output names back
            from edgekit.models.foreign import export_foreign

            export_foreign(model, path)
            head = model.head_layout
            parity = check_parity(
                model.net, path, [val.tensor(i) for i in range(min(4, len(val)))], atol=PARITY_ATOL, rtol=0.0
            )
        elif hasattr(model, "head") and isinstance(getattr(model, "path", None), (str, Path)):
            shutil.copyfile(model.path, path)
            head, parity = model.head, {"note": "user ONNX, not re-exported"}
        else:  # the built-in detector (or a torch model with its interface)
            model = float_view(model)
            export_onnx(model, ctx.spec.input_shape(), path)
            parity = check_parity(
                model, path, [val.tensor(i) for i in range(min(4, len(val)))], atol=PARITY_ATOL, rtol=0.0
            )
            if program == "torchscript":
                ts_path = export_torchscript(model, ctx.spec.input_shape(), ctx.run_dir / "model_fp32.pt")
            elif program == "export-raw":
                ts_path = export_raw_program(model, ctx.spec.input_shape(), ctx.run_dir / "model_raw.pt2")
        if head is not None and program == "export-raw":
            from edgekit.export.onnx_cut import raw_program_from_onnx

            # the user's graph up to its prediction convs as a torch program; its own decode stays ONNX
            ts_path = raw_program_from_onnx(path, ctx.run_dir / "model_raw.pt2", head)
        info = onnx_info(path)
    outputs = {p.name: sha256_file(p) for p in (path, ts_path) if p is not None}
    metrics = {**state.facts.stats, "size_bytes": int(info["size_bytes"])}
    add_node(
        ctx,
        "export",
        {"opset": info.get("opset"), "parity_atol": PARITY_ATOL},
        fields,
        label="ONNX export (FP32 parity checked with ONNX Runtime)"
        + {"torchscript": " + TorchScript trace", "export-raw": " + torch.export raw-head program"}.get(
            program or "", ""
        )
        * bool(ts_path),
        metrics=metrics,
        outputs=outputs,
        extra={"parity": parity, "ops": info.get("ops")},
        tools=_tools("torch", "onnx", "onnxruntime"),
    )
    return Exported(path, ts_path)


def _tools(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def control_stage(ctx: RunContext, recipe: Recipe, model: Any, data: DataResult) -> None:
    """``--control``: the compressed architecture trained from scratch for the same epochs; recipe − control.

    The node's parent is the last compression step (the model it is the control of), so the deploy chain
    (export, build, eval) is untouched; it is added at the end of the run, after the device work.
    """
    from edgekit.compress.control import CONTROL_LR, CONTROL_SEED, recipe_epochs, train_control, versus
    from edgekit.compress.graph import prunable_convs
    from edgekit.models.train import InMemorySplit
    from edgekit.report.record import Node

    comp = [n for n in ctx.record.nodes if n.stage.startswith("compress:")]
    train_node = ctx.record.node("train")
    with stage(ctx, "control") as fields:
        ref_epochs = (train_node.extra or {}).get("epochs") or train_node.config["train"]["epochs"]
        spent = recipe_epochs(recipe, lambda: len(prunable_convs(model, ctx.spec.input_shape())))
        epochs = float(ref_epochs) + spent * ctx.epochs_scale
        workdir = compress_workdir(recipe, "control-" + compress_key(ctx, recipe, model))
        result = train_control(
            model,
            epochs,
            lambda: InMemorySplit(YoloDataset(data.root, "train"), ctx.spec),
            data.val,
            ctx.spec.input_shape(),
            workdir,
            ctx.progress,
        )
    cached = result.pop("cached")
    metrics = {k: result[k] for k in ("params", "macs", "map50", "map50_95")}
    delta = versus(comp[-1].metrics, metrics)
    node = Node.create(
        "control",
        {
            "epochs": result["epochs"],
            "reference_epochs": float(ref_epochs),
            "lr": CONTROL_LR,
            "seed": CONTROL_SEED,
        },
        comp[-1].id,
        ctx.record.target,
        label=f"control: the compressed architecture trained from scratch, {result['epochs']:g} epochs",
        metrics=metrics,
        extra={"recipe_minus_control": delta, "train_wall_s": result["wall_s"]},
        cached=cached,
        **fields,
    )
    ctx.record.add(node)
    ctx.save()
