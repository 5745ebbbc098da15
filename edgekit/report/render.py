"""Render a run's report (Markdown and a self-contained HTML page) from its ``record.json`` alone."""

from __future__ import annotations

from pathlib import Path

from edgekit.core.files import atomic_write_text
from edgekit.report.compression import NONE, slimming_blocks, teacher_init_blocks, training_curve_blocks
from edgekit.report.compression import fmt_num as _num
from edgekit.report.details import (
    BenchDetails,
    BuildDetails,
    ControlDetails,
    Figures,
    LayerTable,
    QuantizationView,
    QuantizeDetails,
    SearchDetails,
    details,
    find,
)
from edgekit.report.device import NOT_MEASURED, latency_detail, on_device
from edgekit.report.device import cell as _cell
from edgekit.report.plots import draw_all
from edgekit.report.record import RunRecord
from edgekit.report.summary import Summary, metric_label, run_metric
from edgekit.report.templates import Block, Heading, Image, Paragraph, Table, to_html, to_markdown

PLOTS_DIR = "report_files"
PLOT_TITLES = {
    "latency": "Latency distribution",
    "accuracy_vs_cost": "Accuracy against cost",
    "bn_gamma": "BatchNorm scale factors (slimming)",
}


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return NONE
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}".rstrip()
    return f"{value:g} {unit}".rstrip()


def _bytes(value: float | None) -> str:
    if value is None:
        return NONE
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def _ratio(ref: float | None, dep: float | None) -> str:
    if ref in (None, 0) or dep is None:
        return ""
    return f"{(dep - ref) / ref * 100:+.1f}%"


def _delta(ref: float | None, dep: float | None) -> str:
    return "" if ref is None or dep is None else f"{dep - ref:+.3f}"


def _title(summary: Summary) -> str:
    parts = [str(v) for v in (summary.target, summary.backend, summary.precision) if v]
    return "edgekit report: " + (" · ".join(parts) or "run")


def _status_blocks(record: RunRecord) -> list[Block]:
    tone = "ok" if record.status == "ok" else "bad" if record.status != "running" else "note"
    blocks: list[Block] = [Paragraph(record.status, label="Status:", tone=tone)]
    if record.failed_stage:
        blocks.append(Paragraph(record.failed_stage, label="Stopped at stage:", tone="bad"))
    error = record.error or {}
    if error.get("message"):
        blocks.append(Paragraph(str(error["message"]), label="Error:", tone="bad"))
    if error.get("hint"):
        blocks.append(Paragraph(str(error["hint"]), label="Hint:"))
    if record.gates:
        rows = [
            [
                name,
                f"{g.limit:g}",
                _num(g.value, 4) if g.value is not None else NOT_MEASURED,
                "pass" if g.passed else "FAIL",
            ]
            for name, g in record.gates.items()
        ]
        blocks += [Heading("Gates"), Table(["gate", "limit", "value", "result"], rows, frozenset({1, 2}))]
    return blocks + _baseline(record.baseline)


def _baseline(verdict: dict | None) -> list[Block]:
    """The run against its baseline in the run history (``--baseline``), gate by gate."""
    if not verdict:
        return []
    if not verdict.get("baseline_id"):
        return [Paragraph(f"none found: {verdict.get('note')}", label="Baseline:", tone="note")]
    rows = [
        [
            c["gate"],
            _num(c["baseline"], 4),
            _num(c["value"], 4),
            c["note"] if c["passed"] is not None else f"not compared: {c['note']}",
            {True: "pass", False: "REGRESSION", None: NOT_MEASURED}[c["passed"]],
        ]
        for c in verdict.get("checks", [])
    ]
    return [
        Heading("Against the baseline"),
        Paragraph(f"{verdict['baseline_id']} ({verdict.get('note')})", label="Baseline:"),
        Table(["figure", "baseline", "this run", "change", "result"], rows, frozenset({1, 2})),
    ]


def _headline(record: RunRecord, summary: Summary) -> list[Block]:
    ref, dep, lat = summary.reference, summary.deployed, summary.latency_ms
    ref_node, bench = record.node("reference"), record.node("bench")
    ref_size = ref_node.metric("size_bytes") if ref_node else None
    ref_lat = (ref_node.metric("latency_ms") if ref_node else None) or {}
    bench_lat = (bench.metric("latency_ms") if bench else None) or {}
    rows = [
        ["parameters", _si(ref.params), _si(dep.params), _ratio(ref.params, dep.params)],
        ["MACs", _si(ref.macs), _si(dep.macs), _ratio(ref.macs, dep.macs)],
        ["size", _bytes(ref_size), _bytes(dep.artifact_bytes), _ratio(ref_size, dep.artifact_bytes)],
        [
            metric_label(summary.metric, "0.5"),
            _num(ref.map50, 3),
            _num(dep.map50, 3),
            _delta(ref.map50, dep.map50),
        ],
        [
            metric_label(summary.metric, "0.5:0.95"),
            _num(ref.map50_95, 3),
            _num(dep.map50_95, 3),
            _delta(ref.map50_95, dep.map50_95),
        ],
        ["latency p50 (ms)", _num(ref_lat.get("p50"), 2), _num(lat.p50, 2), ""],
        ["latency p99 (ms)", _num(ref_lat.get("p99"), 2), _num(bench_lat.get("p99"), 2), ""],
        ["FPS", _num(ref_node.metric("fps") if ref_node else None, 1), _num(summary.fps, 1), ""],
    ]
    if summary.emulator:  # emulator time is not board time: its own rows, never the board's
        emu = summary.emulator_time_ms or lat
        rows[5:8] = [
            ["latency p50 (ms)", _num(ref_lat.get("p50"), 2), NOT_MEASURED, ""],
            [f"emulator time p50 (ms, {summary.emulator})", "", _num(emu.p50, 1), ""],
            [f"emulator time p99 (ms, {summary.emulator})", "", _num(bench_lat.get("p99"), 1), ""],
        ]
    rows += [
        ["power (W)", NONE, _num(summary.power_w, 2), ""],
        ["energy per inference (mJ)", NONE, _num(summary.energy_mj_per_inference, 2), ""],
    ]
    for row in rows:
        row[1:3] = [NOT_MEASURED if cell == NONE else cell for cell in row[1:3]]
    headers = ["", "reference (FP32, host)", "deployed", "change"]
    blocks: list[Block] = [Heading("Reference against deployed"), Table(headers, rows, frozenset({1, 2, 3}))]
    if summary.emulator:
        blocks.append(
            Paragraph(
                f"The device is an **emulated board** ({summary.emulator}): the runtime's real ARM kernels "
                "ran, so its outputs (and the mAP above) are the board's arithmetic, but its timings are "
                "emulator time, tens to hundreds of times a real core's. No board latency was measured.",
                tone="note",
            )
        )
    if summary.metric == "teacher_agreement":
        blocks.append(
            Paragraph(
                "No labels were given for this model, so accuracy is **teacher agreement**: the mAP of each "
                "model's detections measured against the FP32 original's own detections (score >= 0.25) on "
                "images held back from the distillation. The reference scores 1 by construction; the drop "
                "says how much of what the original detects survives compression and INT8. It is not the "
                "model's accuracy on real labels (give --data for that).",
                tone="note",
            )
        )
    return blocks


def _control(record: RunRecord) -> list[Block]:
    """Recipe against its control (``--control``): did compressing beat training the small model directly?"""
    ctl = record.node("control")
    if ctl is None:
        return []
    comp = next((n for n in record.nodes if n.id == ctl.parent), None)
    if comp is None:
        return []
    rows = [
        [label, fmt(comp.metric(key)), fmt(ctl.metric(key)), diff]
        for label, key, fmt, diff in (
            ("parameters", "params", _si, ""),
            ("MACs", "macs", _si, ""),
            ("mAP@0.5", "map50", lambda v: _num(v, 3), _delta(ctl.metric("map50"), comp.metric("map50"))),
            (
                "mAP@0.5:0.95",
                "map50_95",
                lambda v: _num(v, 3),
                _delta(ctl.metric("map50_95"), comp.metric("map50_95")),
            ),
        )
    ]
    gain = (details(ctl, ControlDetails).recipe_minus_control or Figures()).map50_95
    if gain is None:
        verdict = "recipe − control: not measured"
    elif gain >= 0:
        verdict = f"the recipe beats its control by {gain:.2f} points of mAP@0.5:0.95"
    else:
        verdict = (
            f"the recipe loses to its control by {-gain:.2f} points of mAP@0.5:0.95: the same epochs spent "
            "training this architecture from scratch did better"
        )
    epochs = ctl.config.get("epochs")
    headers = [
        "",
        "recipe (torch, before INT8)",
        f"control (from scratch, {epochs:g} epochs)",
        "recipe − control",
    ]
    return [
        Heading("Recipe against its control"),
        Table(headers, rows, frozenset({1, 2, 3})),
        Paragraph(verdict, tone="note" if gain is None or gain >= 0 else "bad"),
    ]


def _calibration(summary: Summary) -> list[Block]:
    calib = summary.calibration
    if calib.name is None:
        return [Heading("Calibration set"), Paragraph("none (this build was not calibrated)", tone="note")]
    rows = [
        ["name", str(calib.name)],
        ["version", str(calib.version)],
        ["sha256", str(calib.sha256)],
    ]
    return [Heading("Calibration set"), Table(["", ""], rows)]


#: Why a layer stays float, by where the list came from.
_FLOAT_WHY = {
    "keep_float": "the detector's head (its outputs become boxes and scores) and layers the sensitivity "
    "search found to move the detections most",
    "float_layers": "the detector's prediction convolutions, and any convolution feeding one directly",
}


def _int8(record: RunRecord) -> list[Block]:
    """The INT8 build: method, its agreement with FP32's detections, and the layers kept in float."""
    build = record.node("build")
    if build is None or build.config.get("precision") != "int8":
        return []
    built = details(build, BuildDetails)
    quant = built.quantization or QuantizationView()
    source = "float_layers" if quant.float_layers is not None else "keep_float"
    floats = quant.float_layers if quant.float_layers is not None else quant.keep_float
    if floats is None:
        floats = details(record.node("quantize"), QuantizeDetails).keep_float
    detections = built.parity.detections if built.parity else None
    rows = [["method", str(quant.method or NONE)]]
    if detections is not None and detections.model_fields_set:
        rows += [
            ["FP32 detections kept (check images)", _num(detections.kept, 3)],
            ["mean score error", _num(detections.score_error, 4)],
            ["box IoU with FP32", _num(detections.box_iou, 3)],
        ]
    names = list(floats or [])
    rows.append(["layers kept in float", str(len(names)) if floats is not None else NONE])
    blocks: list[Block] = [Heading("INT8"), Table(["", ""], rows)]
    if names:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        why = quant.float_why or _FLOAT_WHY[source]  # a backend may state its own reason
        blocks.append(Paragraph(f"{shown}. Why: {why}.", tone="note"))
    return blocks


def _stages(record: RunRecord) -> list[Block]:
    rows = [
        [
            n.stage,
            n.label,
            n.id[:8],
            _si(n.metric("params")),
            _si(n.metric("macs")),
            _bytes(n.metric("size_bytes")),
            _num(n.metric("map50"), 3),
            _num(n.metric("map50_95"), 3),
            _num(n.seconds, 1),
            "yes" if n.cached else "no",
            n.status,
        ]
        for n in record.nodes
    ]
    headers = [
        "stage",
        "label",
        "id",
        "params",
        "MACs",
        "size",
        *(
            ("agreement50", "agreement50-95")
            if run_metric(record) == "teacher_agreement"
            else ("mAP50", "mAP50-95")
        ),
        "seconds",
        "cached",
        "status",
    ]
    if not rows:
        return [Heading("Stages"), Paragraph("no stage finished", tone="note")]
    return [Heading("Stages"), Table(headers, rows, frozenset({3, 4, 5, 6, 7, 8}))]


def _plots(plots: dict[str, Path]) -> list[Block]:
    blocks: list[Block] = []
    for name, title in PLOT_TITLES.items():
        if name in plots:
            blocks += [Heading(title, 3), Image(f"{PLOTS_DIR}/{plots[name].name}", title)]
    return [Heading("Plots"), *blocks] if blocks else []


def _candidates(record: RunRecord) -> list[Block]:
    found = find(reversed(record.nodes), SearchDetails, lambda v: v.candidates)
    if found is None:
        return []
    node, search = found
    rows = [
        [
            str(c.name),
            _num(c.map50, 3),
            _num(c.map50_95, 3),
            _bytes(c.size_bytes),
            _num(c.drop, 2),
            _num(c.latency_ms_p50, 2),
            "chosen" if c.chosen else (f"refused: {c.error}" if c.error else ""),
        ]
        for c in search.candidates
    ]
    base = search.fp32_map50_95
    against = f"loss (pt) vs FP32 {base:.3f}" if base is not None else "loss (pt) vs FP32"
    headers = ["calibrator", "mAP50", "mAP50-95", "size", against, "latency p50 (ms)", ""]
    return [
        Heading(f"Calibrator candidates ({node.stage})"),
        Table(headers, rows, frozenset({1, 2, 3, 4, 5})),
    ]


def _layers(record: RunRecord) -> list[Block]:
    found = find(reversed(record.nodes), LayerTable, lambda v: v.layers)
    if found is None:
        return []
    node, layers = found[0], found[1].layers
    keys = list(dict.fromkeys(k for layer in layers for k in layer))
    rows = [[_cell(layer.get(k)) for k in keys] for layer in layers]
    numeric = frozenset(
        i for i, k in enumerate(keys) if all(isinstance(la.get(k), int | float) for la in layers)
    )
    return [Heading(f"Per-layer table ({node.stage})"), Table(keys, rows, numeric)]


def _runtime_layers(record: RunRecord) -> list[Block]:
    """The slowest layers as the runtime's own profiler timed them on the device (OpenVINO reports them)."""
    report = details(record.node("bench"), BenchDetails).runtime_report or {}
    for runtime, figures in report.items():
        if not figures.layers:
            continue
        rows = [[_cell(r.layer), _cell(r.type), _cell(r.kernel), _num(r.ms, 4)] for r in figures.layers]
        note = (
            f"{runtime}'s profiling counters, mean over its profiled runs (a second compiled model, outside "
            f"the timed loop); inference precision {figures.inference_precision or NONE}."
        )
        return [
            Heading(f"Slowest layers on the device ({runtime})"),
            Table(["layer", "type", "kernel", "ms"], rows, frozenset({3})),
            Paragraph(note, tone="note"),
        ]
    return []


def _environment(record: RunRecord) -> list[Block]:
    tools: dict[str, list[str]] = {}
    for n in record.nodes:
        for name, version in n.tools.items():
            tools.setdefault(name, [])
            if version not in tools[name]:
                tools[name].append(version)
    blocks: list[Block] = [Heading("Tools and host")]
    if tools:
        blocks.append(Table(["tool", "version"], [[k, ", ".join(v)] for k, v in sorted(tools.items())]))
    facts = {"edgekit": record.edgekit_version, **record.host}
    blocks.append(Table(["host", "value"], [[k, _cell(v)] for k, v in facts.items()]))
    device = details(record.node("bench"), BenchDetails).device
    if device is not None and device.rows():
        blocks.append(Table(["device", "value"], [[k, _cell(v)] for k, v in device.rows()]))
    return blocks


def _find_plots(run_dir: Path) -> dict[str, Path]:
    candidates = {name: run_dir / PLOTS_DIR / f"{name}.png" for name in PLOT_TITLES}
    return {name: path for name, path in candidates.items() if path.is_file()}


def build_blocks(record: RunRecord, plots: dict[str, Path]) -> tuple[str, list[Block]]:
    """Assemble the report's content once, for every output format; return ``(title, blocks)``."""
    summary = Summary.of(record)
    title = _title(summary)
    intro = f"run {record.run_id}, created {record.created}, recipe {summary.recipe or NONE}"
    blocks: list[Block] = [Heading(title, 1), Paragraph(intro, tone="note")]
    if record.command:
        blocks.append(Paragraph(" ".join(record.command), label="Command:"))
    sections = (
        _status_blocks(record),
        _headline(record, summary),
        _control(record),
        latency_detail(record),
        on_device(record),
        _calibration(summary),
        _int8(record),
        _stages(record),
        _plots(plots),
        _candidates(record),
        _layers(record),
        _runtime_layers(record),
        teacher_init_blocks(record),
        slimming_blocks(record),
        training_curve_blocks(record),
        _environment(record),
    )
    for section in sections:
        blocks += section
    return title, blocks


def render_markdown(record: RunRecord, run_dir: str | Path, plots: dict[str, Path] | None = None) -> str:
    """Return the Markdown report; plots default to the PNGs already in ``run_dir/report_files``."""
    return to_markdown(build_blocks(record, _find_plots(Path(run_dir)) if plots is None else plots)[1])


def render_html(record: RunRecord, run_dir: str | Path, plots: dict[str, Path] | None = None) -> str:
    """Return the report as one self-contained HTML page (images referenced as ``report_files/*.png``)."""
    title, blocks = build_blocks(record, _find_plots(Path(run_dir)) if plots is None else plots)
    return to_html(title, blocks)


def render_run(run_dir: str | Path, html: bool = True) -> list[Path]:
    """Render ``run_dir/record.json`` into ``report.md`` (and ``report.html``) plus its PNG plots.

    Args:
        run_dir: A run folder holding ``record.json``.
        html: Also write ``report.html``.

    Returns:
        The files written: the report(s) first, then the plots.

    Raises:
        DataError: ``record.json`` is missing or is not a run record.

    Example:
        >>> render_run("runs/20250101-120000-local")  # doctest: +SKIP
        [PosixPath('runs/.../report.md'), PosixPath('runs/.../report.html'), ...]
    """
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir / "record.json")
    plots = draw_all(record, run_dir / PLOTS_DIR)
    title, blocks = build_blocks(record, plots)
    written = [atomic_write_text(run_dir / "report.md", to_markdown(blocks))]
    if html:
        written.append(atomic_write_text(run_dir / "report.html", to_html(title, blocks)))
    return written + list(plots.values())
