"""The report's device sections: the latency (or emulator time) table and what happened on the device."""

from __future__ import annotations

from typing import Any

from edgekit.report.compression import NONE
from edgekit.report.compression import fmt_num as _num
from edgekit.report.details import BenchDetails, details
from edgekit.report.record import RunRecord, latency_warnings
from edgekit.report.templates import Block, Heading, Paragraph, Table

NOT_MEASURED = "not measured"


def cell(value: Any) -> str:
    """One table cell: ``None`` as the missing mark, booleans as yes/no, floats to four figures."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def latency_detail(record: RunRecord) -> list[Block]:
    """The bench's latency statistics (emulator time on an emulated board), with their warnings."""
    bench = record.node("bench")
    stats = (bench.metric("latency_ms") if bench else None) or {}
    if not stats:
        return []
    keys = [k for k in ("n", "mean", "std", "cv", "min", "p50", "p90", "p95", "p99", "max") if k in stats]
    row = [str(stats[k]) if k == "n" else _num(stats[k], 3) for k in keys]
    note = "Percentiles are nearest-rank (as trtexec reports them); std is the population deviation."
    emulator = record.target.get("emulator")
    if emulator:
        note = f"Emulator time ({emulator}), not board time. " + note
    warnings = latency_warnings(details(bench, BenchDetails).latencies_ms)
    return [
        Heading("Emulator time (ms)" if emulator else "Latency (ms)", 3),
        Table(keys, [row], frozenset(range(len(keys)))),
        Paragraph(note, tone="note"),
        *(Paragraph(w, label="Warning:", tone="bad") for w in warnings),
    ]


def _energy(m: dict[str, Any]) -> str:
    if "energy_mj_per_inference" not in m:
        return NOT_MEASURED
    dynamic = m.get("energy_dynamic_mj_per_inference")
    above = _num(dynamic, 3) if dynamic is not None else NOT_MEASURED
    return f"{_num(m['energy_mj_per_inference'], 3)} / {above}"


def on_device(record: RunRecord) -> list[Block]:
    """The "On the device" table: power (or why not), the correctness guard, throttling, device state."""
    bench = record.node("bench")
    if bench is None:
        return []
    extra, m = details(bench, BenchDetails), bench.metrics
    rows = [
        ["power", extra.power_note or NOT_MEASURED],
        ["mean power in the timed window (W)", _num(m.get("power_w"), 3) if "power_w" in m else NOT_MEASURED],
        ["idle power, same mode (W)", _num(m.get("idle_w"), 3) if "idle_w" in m else NOT_MEASURED],
        ["energy per inference, total / above idle (mJ)", _energy(m)],
        ["power samples in the window", cell(extra.power_samples_in_window)],
    ]
    cpu = extra.device.cpu if extra.device else None
    if cpu is not None and (cpu.model or cpu.arch):
        emulated = f" (emulated: {record.target['emulator']})" if record.target.get("emulator") else ""
        rows.append(["CPU", f"{cpu.model or '?'}, {cpu.arch}, int8 path {cpu.int8_dot}{emulated}"])
    if extra.arithmetic:
        rows.append(["arithmetic on this CPU", extra.arithmetic])
    guard = extra.guard
    if guard is not None:
        verdict = (
            f"passed: cosine {guard.cosine or 0:.5f} to {guard.reference}"
            if guard.checked
            else f"not checked ({guard.reason})"
        )
        rows.append(["correctness guard (fixed input)", verdict])
    before, after = extra.before, extra.after
    for value, label in ((before.model, "board"), (before.l4t, "L4T"), (before.power_mode, "power mode")):
        if value:
            rows.append([label, str(value)])
    if before.thermal or after.thermal:
        rows.append(
            ["hottest zone before / after (°C)", f"{_num(before.hottest, 1)} / {_num(after.hottest, 1)}"]
        )
    blocks: list[Block] = [Heading("On the device", 3), Table(["", "value"], rows)]
    flags = extra.throttling + extra.warnings
    blocks += [Paragraph(flag, label="Warning:", tone="bad") for flag in flags]
    return blocks
