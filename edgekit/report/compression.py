"""Report sections on how the model was compressed: the reference's curve, the swap's init, slimming."""

from __future__ import annotations

from edgekit.report.details import CompressDetails, Figures, TrainDetails, details, find
from edgekit.report.record import RunRecord
from edgekit.report.templates import Block, Heading, Paragraph, Table

NONE = "—"


def fmt_num(value: float | None, digits: int, unit: str = "") -> str:
    """``value`` with ``digits`` decimals and ``unit``, or the dash when not measured."""
    return NONE if value is None else f"{value:.{digits}f}{unit}"


def _noted_table(
    title: str, note: str, headers: list[str], rows: list[list[str]], numeric: set[int]
) -> list[Block]:
    """A section: heading, a note on how to read it, the table (``numeric`` = right-aligned columns)."""
    return [Heading(title), Paragraph(note, tone="note"), Table(headers, rows, frozenset(numeric))]


def teacher_init_blocks(record: RunRecord) -> list[Block]:
    """How the swapped blocks were initialised from the teacher (empty without a swap)."""
    found = find(record.nodes, CompressDetails, lambda v: v.init is not None)
    if found is None or found[1].init is None:
        return []
    node, init = found[0], found[1].init
    first, last = init.fit_loss_first_epoch, init.fit_loss
    rows = [[name, fmt_num(first.get(name), 3), fmt_num(last.get(name), 3)] for name in init.fitted]
    after = init.after_init or Figures()
    widened = " (widened through Net2WiderNet channel maps)" if init.widened else ""
    fed = init.student_fed_steps
    fed_note = f", the last {fed} on the student's own features" if fed else ""
    note = (
        f"The swapped model started from the reference: {', '.join(init.copied) or NONE} "
        f"copied{widened}, each swapped block fitted to the block it replaces ({init.steps} steps"
        f"{fed_note}). "
        f"Before end-to-end training: mAP50 {fmt_num(after.map50, 3)}, "
        f"mAP50-95 {fmt_num(after.map50_95, 3)}. Fit loss = squared error / variance of the teacher's "
        "output (1 = no better than its mean)."
    )
    headers = ["block", "fit loss, first epoch", "fit loss, last epoch"]
    return _noted_table(f"Swap initialised from the teacher ({node.stage})", note, headers, rows, {1, 2})


def slimming_blocks(record: RunRecord) -> list[Block]:
    """Where slimming's accuracy goes, stage by stage (empty without a slim step)."""
    found = find(record.nodes, CompressDetails, lambda v: v.stages is not None)
    if found is None or found[1].stages is None:
        return []
    node, stages, sparsity = found[0], found[1].stages, found[1].sparsity
    i = record.nodes.index(node)
    start = Figures.model_validate(record.nodes[i - 1].metrics) if i else Figures()
    points = [
        ("start", start),
        ("after sparsity training", stages.after_sparsity),
        ("after the cut (BN re-estimated)", stages.after_prune),
        ("after the fine-tune", Figures.model_validate(node.metrics)),
    ]
    rows = [[what, fmt_num(m.map50, 3), fmt_num(m.map50_95, 3)] for what, m in points]
    before, after, dead = sparsity.fraction_before, sparsity.fraction_after, sparsity.dead_after
    strength = "||(gamma, beta)||" if sparsity.shrink == "channel" else "|gamma|"
    whole = " (whole channels: removing them changes nothing)" if sparsity.shrink == "channel" else ""
    dead_note = f" {fmt_num(100 * dead, 1, ' %')} exactly zero{whole}." if dead is not None else ""
    note = (
        f"Channels with {strength} below {fmt_num(sparsity.below, 2)} x their layer's mean: "
        f"{fmt_num(None if before is None else 100 * before, 1, ' %')} before sparsity training, "
        f"{fmt_num(None if after is None else 100 * after, 1, ' %')} after.{dead_note} "
        "Where the accuracy goes: the sparsity training, the cut of the channels, and what the fine-tune "
        "recovers."
    )
    headers = ["stage", "mAP50", "mAP50-95"]
    return _noted_table(f"Slimming by stage ({node.stage})", note, headers, rows, {1, 2})


def training_curve_blocks(record: RunRecord) -> list[Block]:
    """The reference's training curve, epochs to val mAP (empty when it was not trained here)."""
    train = details(record.node("train"), TrainDetails)
    curve = train.curve
    if not curve:
        return []
    rows = [
        [
            fmt_num(p.epochs, 0),
            fmt_num(p.lr, 5),
            fmt_num(p.map50, 3),
            fmt_num(p.map50_95, 3),
            fmt_num(p.wall_s, 0, " s"),
            "kept" if p.epochs == train.epochs else "",
        ]
        for p in curve
    ]
    wall = train.wall_s
    minutes = fmt_num(wall / 60 if wall else None, 1, " min")
    note = (
        f"Cosine cycles with warm restarts; stopped on {train.stopped or NONE} after "
        f"{fmt_num(curve[-1].epochs, 0)} epochs ({minutes} to train)."
    )
    headers = ["epochs", "peak lr", "val mAP50", "val mAP50-95", "cycle time", ""]
    return _noted_table("Reference training", note, headers, rows, {0, 1, 2, 3, 4})
