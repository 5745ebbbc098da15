"""``edgekit deploy``: data → model → compress → export → quantize → build → bench + eval → report.

Everything is checked before work starts (target, backend, recipe order, calibration set); every stage
adds a node to ``runs/<id>/record.json``; a failure leaves the finished stages and a record saying where
it stopped.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends.contract.board_check import checks_on
from edgekit.backends.contract.int8_plan import Int8Plan, decide_int8
from edgekit.core.config import Target, load_target
from edgekit.core.errors import ConfigError, EdgekitError, GateError
from edgekit.core.files import atomic_write_json, make_run_dir
from edgekit.data.preprocess import PreprocessSpec
from edgekit.device.cpuprobe import cpu_line
from edgekit.device.transport import DeviceSession
from edgekit.report.record import RunRecord
from edgekit.stages import RunContext, add_node, model_stats, stage
from edgekit.stages.bench import check_target_ready
from edgekit.stages.context import Sources


@dataclass
class DeployRequest:
    """What the user asked for (the CLI and `make deploy` build one of these).

    Attributes:
        target: Target name, alias or YAML path (or a loaded :class:`Target`, as a sweep gives it).
        model: ``builtin`` (the reference detector), an ONNX file, or ``module:factory`` (with ``weights``).
        weights: State dict for a ``module:factory`` model.
        head: Output layout of a user ONNX model (``yolov5``/``yolov8``); detected when None.
        recipe: Compression recipe name or YAML path.
        calib: Calibration set name (``NAME`` or ``NAME@vK``); default: made from the dataset's calib split.
        calibrator: Overrides the recipe's PTQ method (``minmax``, ``entropy``, ``percentile``, ``auto``).
        max_drop: mAP@0.5:0.95 points the ``auto`` calibrator may lose (measured on the target's outputs).
        data: YOLO dataset folder for training/eval; default: the built-in hard shapes set.
        images: Folder of unlabelled images for a user's model without ``data``: 4 in 5 train the
            distillation, 1 in 5 is held back to measure teacher agreement (default: the built-in images).
        device: ``local`` runs the target's artifact on this host instead of the board; ``sim`` on the
            emulated board (:mod:`edgekit.device.sim`), started if needed.
        check_on: A board simulator (``rpi4``, ``rk3588``) the build's checks run on, for a backend that
            can (MNN); ``device="sim"`` implies the target's own simulator.
        out: Folder that receives the run folder.
        max_map_drop: Gate: allowed mAP@0.5:0.95 drop (points) of the deployed artifact vs the reference.
        max_p99_ms: Gate: allowed p99 latency (ms) on the device.
        baseline: Gate against history: ``last``, a run id or a git ref (:mod:`edgekit.history.gates`);
            the run fails when its mAP drops more than ``baseline_map_drop`` points below the baseline's,
            or its p99 rises more than ``baseline_p99_rise`` percent and more than the measured noise.
        sweep: The sweep this run is an item of (recorded, and indexed in the run history).
        epochs_scale: Multiplies every training schedule (tests use small values).
        reference: The built-in model's training: ``converged`` (shipped, or trained to the plateau rule
            of :mod:`edgekit.models.converge`) or ``quick`` (one 10-epoch cosine schedule × ``epochs_scale``).
        control: Also train the recipe's control (its compressed architecture from scratch for the
            reference's + the recipe's epochs) and report recipe − control; about doubles a cold run.
    """

    target: str | Target = "local"
    model: str = "builtin"
    weights: str | None = None
    head: str | None = None
    recipe: str = "default"
    calib: str | None = None
    calibrator: str | None = None
    max_drop: float | None = None
    data: str | None = None
    images: str | None = None
    device: str | None = None
    check_on: str | None = None
    out: Path = Path("runs")
    run_id: str | None = None
    calib_root: Path = Path("calibration")
    max_map_drop: float | None = None
    max_p99_ms: float | None = None
    baseline: str | None = None
    sweep: str | None = None
    baseline_map_drop: float = 0.5
    baseline_p99_rise: float = 10.0
    epochs_scale: float = 1.0
    reference: str = "converged"
    control: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def sources(self) -> Sources:
        """The model and data fields the data and model stages read."""
        return Sources(self.model, self.weights, self.head, self.reference, self.data, self.images)


@dataclass
class Plan:
    """The resolved request: shown by ``--dry-run``, run by :func:`run_plan`."""

    request: DeployRequest
    target: Target
    recipe: Any
    backend_cls: type
    transport_factory: Any
    int8: Int8Plan | None = None

    def describe(self) -> dict:
        """A plain-dict view of the plan (for ``--dry-run``)."""
        r = self.request
        stages = [
            "data",
            "model",
            *(["teacher labels"] if r.model != "builtin" and not r.data else []),
            "reference",
            *[f"compress:{s.type}" for s in self.recipe.torch_steps()],
            "export",
        ]
        if self.int8 is not None and self.int8.quantize_stage:
            stages.append("quantize")
        stages += ["build", "eval", "bench", *(["control"] if r.control else []), "report"]
        return {
            "target": self.target.name,
            "backend": self.target.backend,
            "precision": self.target.precision,
            "device": r.device or self.target.connection.type,
            "device_cpu": cpu_line(self.target, r.device),
            "model": r.model,
            "recipe": self.recipe.name,
            "calibration": r.calib or "(made from the dataset's calib split)",
            "stages": stages,
            "int8": self.int8.describe() if self.int8 else None,
            "model_route": r.sources().route(bool(self.recipe.torch_steps())),
            "out": str(r.out),
            "gates": {"max_map_drop": r.max_map_drop, "max_p99_ms": r.max_p99_ms},
            "baseline": r.baseline
            and {
                "run": r.baseline,
                "max_map_drop_pt": r.baseline_map_drop,
                "max_p99_rise_pct": r.baseline_p99_rise,
            },
        }


def make_plan(request: DeployRequest) -> Plan:
    """Resolve and check everything that can be checked before running.

    Raises:
        ConfigError: Unknown target/recipe, a recipe whose steps cannot follow each other, a recipe that
            quantizes for an fp32 target, or compression steps on an ONNX model.
        EdgekitError: The target's backend is not built yet or cannot be reached.
    """
    from edgekit.compress.recipe import load_recipe

    target = request.target if isinstance(request.target, Target) else load_target(request.target)
    if request.device == "sim":
        from edgekit.device.sim.target import sim_target

        target = sim_target(target)
        if request.max_p99_ms is not None:
            raise ConfigError(
                f"--max-p99-ms gates a board's latency, and {target.emulator} is an emulator: its time is "
                "not board time",
                "drop --max-p99-ms with --device sim (gate on accuracy with --max-map-drop)",
            )
    if request.baseline:
        from edgekit.history.gates import check_spec

        check_spec(request.out, request.baseline)
    recipe = load_recipe(request.recipe)
    quant = recipe.quantize_step()
    if quant is not None and target.precision != "int8":
        raise ConfigError(
            f"recipe '{recipe.name}' quantizes ({quant.type}) but target '{target.name}' is "
            f"{target.precision}",
            "pick an int8 target or a recipe without ptq/qat",
        )
    if request.model != "builtin":
        check_foreign_steps(recipe)
    if request.images and (request.data or request.model == "builtin"):
        raise ConfigError(
            "--images gives unlabelled images for a user's model without labels; this run has "
            + ("labels (--data)" if request.data else "the built-in model, trained on its own data"),
            "drop --images" + (", or drop --data to measure teacher agreement" if request.data else ""),
        )
    if request.images:
        from edgekit.data.unlabelled import folder_splits

        folder_splits(request.images)  # a missing folder or too few images stops the plan here
    if request.control and (request.model != "builtin" or not recipe.torch_steps()):
        raise ConfigError(
            "--control trains the compressed architecture from scratch for the reference's epochs plus the "
            f"recipe's; it needs the built-in reference and a recipe with torch steps (got model "
            f"'{request.model}', recipe '{recipe.name}')",
            "drop --control, or use MODEL=builtin with a compressing recipe",
        )
    if request.calib:  # a set that does not exist or does not verify stops the plan, --dry-run included
        from edgekit.calib import CalibrationSet

        CalibrationSet.load(request.calib, root=Path(request.calib_root))
    backend_cls, transport_factory = check_target_ready(target, request.device)
    int8 = int8_plan(request, recipe, backend_cls) if target.precision == "int8" else None
    _check_model_source(request, target, backend_cls, bool(recipe.torch_steps()))
    return Plan(request, target, recipe, backend_cls, transport_factory, int8)


#: Steps a user's detector takes (no layer swaps: it has no blocks edgekit knows).
FOREIGN_STEPS = {"prune", "progressive", "slim", "finetune", "distill", "ptq", "qat"}
_FOREIGN_WHY = {
    "swap": "the Micro-YOLO swap replaces edgekit's own detector blocks, which a user's model does not have",
}


def check_foreign_steps(recipe: Any) -> None:
    """A user's detector takes every step but the layer swap (:data:`FOREIGN_STEPS`); refuse the rest now.

    Raises:
        ConfigError: Naming the first step that cannot apply, why, and the recipes that can.
    """
    from edgekit.compress.recipe import available_recipes

    for i, step in enumerate(recipe.steps):
        if step.type not in FOREIGN_STEPS:
            usable = [n for n in available_recipes() if _foreign_ok(n)]
            raise ConfigError(
                f"recipe '{recipe.name}' step {i} '{step.type}' cannot apply to a user's model: "
                f"{_FOREIGN_WHY.get(step.type, 'not supported')}",
                f"use --recipe {' / '.join(usable)}",
            )


def _foreign_ok(name: str) -> bool:
    from edgekit.compress.recipe import load_recipe

    try:
        return all(s.type in FOREIGN_STEPS for s in load_recipe(name).steps)
    except ConfigError:
        return False


def int8_plan(request: DeployRequest, recipe: Any, backend_cls: type) -> Int8Plan:
    """The run's INT8 decision: ``--calibrator``/``--max-drop`` over the recipe's ptq (or qat) step."""
    quant = recipe.quantize_step()
    method = request.calibrator or getattr(quant, "method", "default")
    max_drop = request.max_drop if request.max_drop is not None else getattr(quant, "max_drop", 1.0)
    return decide_int8(
        backend_cls, method, qat=quant is not None and quant.type == "qat", max_drop=max_drop,
        keep_float=getattr(quant, "keep_float", "auto"), recipe=f"recipe '{recipe.name}'",
    )  # fmt: skip


def _check_model_source(request: DeployRequest, target: Target, backend_cls: type, trainable: bool) -> None:
    """Missing files, corrupt ONNX and ops the target cannot run fail here, before any work."""
    from edgekit.backends.contract.base import raise_for_problems
    from edgekit.core.errors import ModelError

    for label, value in (("model", request.model), ("weights", request.weights)):
        if value and (value.endswith((".onnx", ".pt", ".pth")) and not Path(value).is_file()):
            raise ModelError(
                f"{label} file not found: {value}", "check the path (relative to the current folder)"
            )
    if request.model.endswith(".onnx"):
        _check_user_onnx(request, target, trainable)
        backend = backend_cls()
        check = precision = target.precision
        if precision == "int8" and backend_cls.int8_source == "qdq":
            # the float ONNX is quantized to QDQ later (quantize stage): check it as the float model it is
            check = next((p for p in backend_cls.precisions if p != "int8"), "fp32")
        raise_for_problems(backend.name, backend.check(request.model, {"precision": check}))


def _check_user_onnx(request: DeployRequest, target: Target, trainable: bool) -> None:
    """A user ONNX: its input size and classes; with torch steps, that it imports and has a head.

    The input size is checked against the target's, the classes against ``--data``'s.
    """
    from edgekit.models.user import inspect_onnx

    det = inspect_onnx(request.model, head=request.head)
    if det.preprocess.input_size != target.input_size:
        raise ConfigError(
            f"{request.model} takes {det.preprocess.input_size} px inputs but target '{target.name}' is set "
            f"to {target.input_size} px",
            f"set input_size: {det.preprocess.input_size} in {target.source or 'the target YAML'} (or a copy "
            "of it given to --target)",
        )
    if request.data:
        from edgekit.data.dataset import YoloDataset

        names = YoloDataset(request.data, "val").names
        if det.num_classes != len(names):
            raise ConfigError(
                f"{request.model} predicts {det.num_classes} classes but {request.data} has {len(names)}",
                "give --data with the model's classes, or leave --data out: without labels the run "
                "measures teacher agreement (--images DIR for your own unlabelled images)",
            )
    if trainable:
        from edgekit.models.foreign import load_foreign, static_proto

        load_foreign(static_proto(det), det.head)  # quantized graph, unknown op, no head: refused now


def _run_id(request: DeployRequest, target: Target, recipe_name: str) -> str:
    return request.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{target.name}-{recipe_name}"


def run_plan(plan: Plan) -> Path:
    """Run a plan; return the run folder. Raises GateError (after writing everything) if a gate failed."""
    req, target = plan.request, plan.target
    run_dir = Path(req.out) / _run_id(req, target, plan.recipe.name)
    make_run_dir(run_dir)
    record = RunRecord.new(
        run_dir.name, req.command, target.model_dump(mode="json"), plan.recipe.model_dump(mode="json")
    )
    record.calibrator = plan.int8.calibrator if plan.int8 else None
    record.sweep = req.sweep
    ctx = RunContext(
        target, run_dir, record, target_spec(target), req.progress, Path(req.calib_root), req.epochs_scale
    )
    # one connection for every stage that needs the board; the record says which device it was
    session = DeviceSession(plan.transport_factory, on_open=record.ran_on)
    try:
        _probe_cpu(ctx, session, req.device)
        _run_stages(ctx, plan, session)
    except BaseException as exc:
        if isinstance(exc, EdgekitError) and not record.nodes:
            shutil.rmtree(run_dir, ignore_errors=True)  # refused before anything finished: no empty folder
            raise
        if record.status == "running":  # stopped outside a stage's bookkeeping
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _write_outputs(ctx)  # the folder keeps what finished, and the record says where it stopped
        raise
    finally:
        session.close()
    _apply_gates(ctx, req)
    return run_dir


def _probe_cpu(ctx: RunContext, session: DeviceSession, device: str | None) -> None:
    """On a board, read its CPU now (:mod:`edgekit.device.cpuprobe`); the run's target and record carry it."""
    from edgekit.device.cpuprobe import on_a_board, probed, record_cpu

    if on_a_board(ctx.target, device):
        ctx.target = probed(ctx.target, session)
        record_cpu(ctx.record, ctx.target)
        ctx.save()


def target_spec(target: Target) -> PreprocessSpec:
    """The model's preprocessing as the target states it (a user ONNX's metadata is checked against it)."""
    return PreprocessSpec(
        **{**target.preprocess.model_dump(exclude_none=True), "input_size": target.input_size}
    )


def _run_stages(ctx: RunContext, plan: Plan, device: DeviceSession) -> None:
    """Run every stage in order; ``device`` is the run's one session to its board."""
    from edgekit.stages import model as ms
    from edgekit.stages.bench import bench_and_eval
    from edgekit.stages.build import build_stage
    from edgekit.stages.calibration import ensure_calibration_set
    from edgekit.stages.quantize import qat_stage, quantize_stage

    req, backend = plan.request, plan.backend_cls()
    src = req.sources()
    data = ms.data_stage(ctx, src)
    state = ms.model_stage(ctx, src, data, trainable=bool(plan.recipe.torch_steps()))
    if data.metric == "teacher_agreement":
        data = ms.teacher_labels_stage(ctx, state, data)
    state = ms.reference_stage(ctx, state, data.val)
    state = ms.compress_stage(ctx, plan.recipe, state, data)
    exported = ms.export_stage(ctx, state, data.val, program=plan.backend_cls.torch_program)
    facts, cs, quantized, int8 = state.facts, None, None, plan.int8
    if int8 is not None:
        with stage(ctx, "calibration"):  # a missing or tampered set stops the run here, recorded
            cs = ensure_calibration_set(ctx, req.calib, req.data, data.root, images=data.images)
        ctx.record.calibration = cs.ref()
        if int8.source == "qat":
            quantized = qat_stage(ctx, backend, state.model, facts)
        elif int8.source == "qdq":
            quantized = quantize_stage(ctx, backend, device, int8, exported.onnx, cs, data.val, facts)
    with checks_on(_check_board(req, plan.target)):
        built = build_stage(
            ctx, backend, device, quantized.onnx if quantized else exported.onnx, reference=exported.onnx,
            cs=cs, int8=int8, val=data.val, facts=facts, quantizer=quantized.quantizer if quantized else None,
            torch_program=exported.program,
        )  # fmt: skip
    with device() as transport:
        bench_and_eval(ctx, built, data.val, transport, facts.stats)
    if req.control:
        ms.control_stage(ctx, plan.recipe, state.model, data)


def _check_board(req: DeployRequest, target: Target) -> Any:
    """The board the build's checks run on: --check-on, or the target's simulator with --device sim."""
    name = req.check_on or (target.board if req.device == "sim" else None)
    if name is None:
        return None
    from edgekit.device.sim.target import board_check

    return board_check(name)


def _write_outputs(ctx: RunContext) -> None:
    from edgekit.history.index import index_run
    from edgekit.report.render import render_run
    from edgekit.report.summary import build_summary, write_summary

    record = ctx.record
    record.summary = build_summary(record) if record.nodes else None
    ctx.save()
    if record.nodes:
        write_summary(record, ctx.run_dir)
        render_run(ctx.run_dir)
        index_run(ctx.run_dir)


def _apply_gates(ctx: RunContext, req: DeployRequest) -> None:
    from edgekit.report.record import Gate

    rec = ctx.record
    ref, dep = rec.node("reference"), rec.node("eval")
    bench = rec.node("bench")
    if req.max_map_drop is not None:
        drop = None
        if ref and dep and ref.metric("map50_95") is not None and dep.metric("map50_95") is not None:
            drop = round((ref.metric("map50_95") - dep.metric("map50_95")) * 100, 3)
        rec.gates["max_map_drop"] = Gate(
            limit=req.max_map_drop, value=drop, passed=drop is not None and drop <= req.max_map_drop
        )
    if req.max_p99_ms is not None:
        p99 = bench.metric("latency_ms_p99") if bench else None
        rec.gates["max_p99_ms"] = Gate(
            limit=req.max_p99_ms, value=p99, passed=p99 is not None and p99 <= req.max_p99_ms
        )
    if req.baseline:
        _baseline_gates(ctx, req)
    failed = [k for k, g in rec.gates.items() if not g.passed]
    rec.status = "gates_failed" if failed else "ok"
    _write_outputs(ctx)
    if failed:
        detail = ", ".join(f"{k} (limit {rec.gates[k].limit}, measured {rec.gates[k].value})" for k in failed)
        raise GateError(
            f"gate failed: {detail}; the run is written to {ctx.run_dir}",
            "see report.md in the run folder; relax the gate or change the recipe",
        )


def _baseline_gates(ctx: RunContext, req: DeployRequest) -> None:
    """Compare the run with its baseline in the run history; each compared figure becomes a gate."""
    from edgekit.history.gates import Tolerances, against_history
    from edgekit.report.record import Gate
    from edgekit.report.summary import build_summary

    rec = ctx.record
    tol = Tolerances(map_drop_pt=req.baseline_map_drop, p99_rise_pct=req.baseline_p99_rise)
    summary = build_summary(rec)
    verdict = against_history(
        rec.model_dump(mode="json", by_alias=True), summary, ctx.run_dir, req.baseline, tol
    )
    rec.baseline = verdict.to_dict()
    for check in verdict.checks:
        if check.passed is not None:
            rec.gates[f"baseline_{check.gate}"] = Gate(
                limit=check.limit, value=check.change, passed=check.passed
            )


def deploy(request: DeployRequest) -> Path:
    """Plan and run a deployment; return the run folder.

    Example:
        >>> run_dir = deploy(DeployRequest(target="local"))  # doctest: +SKIP
        >>> (run_dir / "summary.json").exists()  # doctest: +SKIP
        True
    """
    return run_plan(make_plan(request))


def write_plan(plan: Plan, path: Path) -> None:
    """Save the resolved plan as JSON (used by ``--dry-run --out``)."""
    atomic_write_json(path, plan.describe())


__all__ = ["DeployRequest", "Plan", "deploy", "make_plan", "run_plan", "add_node", "model_stats", "stage"]
