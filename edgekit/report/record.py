"""The run record: every stage of a deploy adds one node; reports are rendered from the record alone.

A run folder ``runs/<id>/`` holds ``record.json`` (this schema, the full lineage) next to the artifacts.
A node's id is a content hash of its stage, config, parent id and target, so an unchanged stage run
again gets the same id (and can be served from the cache).
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit import __version__
from edgekit.core.errors import DataError
from edgekit.core.files import atomic_write_json, stable_hash

SCHEMA_VERSION = 1

# Costs tried in this order when pareto() is not told which one to use.
COST_KEYS = ("macs", "params", "size_bytes", "latency_ms_p50")

_NON_NEGATIVE = ("params", "macs", "size_bytes", "fps", "power_w", "energy_mj_per_inference", "wall_s")
_FRACTIONS = ("map50", "map50_95")


def now_iso() -> str:
    """Return the current UTC time as an ISO-8601 string (seconds precision)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def node_id(stage: str, config: dict[str, Any], parent: str | None, target: dict[str, Any]) -> str:
    """Return the content id of a stage: the same inputs always give the same id.

    Args:
        stage: Stage name, e.g. ``"compress:l1"``.
        config: The stage's configuration (JSON-serialisable).
        parent: Id of the node this one was made from, or None for a root.
        target: The target the run is for (its parsed YAML as a dict).
    """
    return stable_hash({"stage": stage, "config": config, "parent": parent, "target": target})


def nearest_rank(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of an ascending list, nearest rank (the one definition used everywhere)."""
    # round() guards against (100 - p) * n / 100 landing a hair under an integer, e.g. p=90, n=10.
    drop = math.floor(round((100.0 - p) * len(ordered) / 100.0, 9))
    return ordered[max(len(ordered) - 1 - drop, 0)]


def latency_stats(latencies_ms: list[float]) -> dict[str, float]:
    """Summarise per-inference latencies.

    Percentiles use one definition everywhere, nearest rank as trtexec reports them:
    ``p = sorted[max(n - 1 - floor((1 - p/100) * n), 0)]`` (0-based), so p50 of 1..10 is 5 and p99 of
    1..100 is 99. ``std`` is the population standard deviation and ``cv = std / mean``.

    Args:
        latencies_ms: One latency per timed inference, in milliseconds.

    Returns:
        ``{"n", "mean", "std", "cv", "min", "p50", "p90", "p95", "p99", "max"}``.

    Raises:
        DataError: The list is empty or holds a negative or non-finite value.

    Example:
        >>> latency_stats([1.0, 2.0, 3.0, 4.0])["p50"]
        2.0
    """
    values = [float(v) for v in latencies_ms]
    if not values:
        raise DataError("no latencies to summarise", "run at least one timed inference")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError("latencies must be finite and non-negative", "check the runner's timing output")
    ordered = sorted(values)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / n)
    stats: dict[str, float] = {"n": n, "mean": mean, "std": std, "cv": std / mean if mean > 0 else 0.0}
    stats["min"] = ordered[0]
    for p in (50, 90, 95, 99):
        stats[f"p{p}"] = nearest_rank(ordered, p)
    stats["max"] = ordered[-1]
    return stats


CV_LIMIT = 0.05  # device-benchmarking.md 5.2: flag CV > 5 % on CPU boards
DRIFT_LIMIT = 0.05  # same, 6(e): last 10 % of iterations slower than the first 10 % by more than 5 %


def latency_warnings(latencies_ms: list[float], cv_limit: float = CV_LIMIT) -> list[str]:
    """Say when a latency run should not be trusted as it is: too noisy, or slowing down as it ran.

    Args:
        latencies_ms: Per-inference latencies in the order they were timed.
        cv_limit: Largest coefficient of variation (std / mean) accepted without a warning.

    Returns:
        One sentence per problem, each naming the figure and what to do; empty when the run looks clean.

    Example:
        >>> [w.split(":")[0] for w in latency_warnings([1.0] * 50 + [1.2] * 50)]
        ['latency is noisy', 'latency drifted up during the run']
        >>> latency_warnings([1.0, 1.01] * 50)
        []
    """
    values = [float(v) for v in latencies_ms]
    if len(values) < 20:
        return []
    stats = latency_stats(values)
    out = []
    if stats["cv"] > cv_limit:
        out.append(
            f"latency is noisy: CV {100 * stats['cv']:.1f} % (> {100 * cv_limit:.0f} %), slowest run "
            f"{stats['max']:.2f} ms against a median of {stats['p50']:.2f} ms; other load on the device (or "
            "a virtual machine's scheduler) interrupted some runs. p50 holds, p99 and max are less reliable; "
            "re-run on an idle device to firm them up."
        )
    tenth = max(len(values) // 10, 2)
    first, last = sorted(values[:tenth]), sorted(values[-tenth:])
    head, tail = first[len(first) // 2], last[len(last) // 2]
    if head > 0 and tail > head * (1 + DRIFT_LIMIT):
        out.append(
            f"latency drifted up during the run: median of the last 10 % {tail:.3f} ms vs first 10 % "
            f"{head:.3f} ms (+{100 * (tail / head - 1):.0f} %); the device may be throttling or loaded. "
            "Check its temperature and clocks, or lengthen the warm-up."
        )
    return out


#: The edgekit checkout this module runs from (no ``.git`` there: an installed copy).
SOURCE = Path(__file__).resolve().parents[2]


def git(*args: str) -> str | None:
    """``git <args>`` in edgekit's checkout: its output, or ``None`` (no checkout, no git, an error)."""
    import subprocess

    if not (SOURCE / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the edgekit checkout this runs from.

    ``+dirty`` follows it when edgekit's sources have local changes; ``None``: not a git checkout, or no git.
    """
    head = git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "edgekit")
    return head + ("+dirty" if dirty else "")


def host_facts() -> dict[str, Any]:
    """Return facts about this machine worth keeping next to measured numbers."""
    return {
        "hostname": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


class Node(BaseModel):
    """One stage of a run: what went in, what came out, with which tools, and what was measured.

    ``metrics`` may hold any of ``params``, ``macs``, ``size_bytes``, ``map50``, ``map50_95``,
    ``latency_ms`` (a :func:`latency_stats` dict), ``fps``, ``power_w``, ``energy_mj_per_inference``,
    ``wall_s`` and more; a figure that was not measured is left out, never set to 0. ``extra`` is free:
    ``latencies_ms`` (bench), ``gamma_before``/``gamma_after`` (slimming), ``candidates`` (calibrator
    search), ``layers`` (per-layer tolerance table). The report reads it only through the typed views
    of :mod:`edgekit.report.details`.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    parent: str | None = None
    stage: str
    label: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    cached: bool = False
    status: Literal["ok", "failed"] = "ok"
    error: dict[str, Any] | None = None

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        for key in _NON_NEGATIVE + _FRACTIONS:
            value = metrics.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"metric {key!r} must be a finite number, got {value!r}")
            if value < 0 or (key in _FRACTIONS and value > 1):
                raise ValueError(f"metric {key!r} is out of range: {value!r}")
        latency = metrics.get("latency_ms")
        if latency is not None and not isinstance(latency, dict):
            raise ValueError("metric 'latency_ms' must be a dict such as latency_stats() returns")
        return metrics

    @classmethod
    def create(
        cls, stage: str, config: dict[str, Any], parent: str | None, target: dict[str, Any], **fields: Any
    ) -> Node:
        """Build a node whose id is derived from its stage, config, parent and target.

        Example:
            >>> n = Node.create("export", {"opset": 17}, None, {"name": "local"}, label="ONNX export")
            >>> n.id == node_id("export", {"opset": 17}, None, {"name": "local"})
            True
        """
        return cls(
            id=node_id(stage, config, parent, target), parent=parent, stage=stage, config=config, **fields
        )

    def metric(self, key: str) -> Any:
        """Return a metric or None; ``latency_ms_p50`` style keys reach into ``latency_ms``."""
        if key in self.metrics:
            return self.metrics[key]
        if key.startswith("latency_ms_"):
            return (self.metrics.get("latency_ms") or {}).get(key.removeprefix("latency_ms_"))
        return None


class Gate(BaseModel):
    """A CI gate: a limit, the value the run measured (None if it could not) and the verdict."""

    limit: float
    value: float | None = None
    passed: bool


class RunRecord(BaseModel):
    """The full lineage of one run, saved as ``record.json``.

    Example:
        >>> rec = RunRecord.new("r1", ["edgekit", "deploy"], {"name": "local"}, {"name": "default"})
        >>> n = rec.add(Node.create("data", {"set": "shapes"}, None, rec.target, label="dataset"))
        >>> rec.node("data") is n
        True
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    run_id: str
    created: str
    edgekit_version: str = __version__
    git_commit: str | None = None
    sweep: str | None = None
    calibrator: str | None = None
    device: str | None = None
    command: list[str] = Field(default_factory=list)
    target: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    host: dict[str, Any] = Field(default_factory=dict)
    status: Literal["running", "ok", "failed", "gates_failed", "interrupted"] = "running"
    failed_stage: str | None = None
    error: dict[str, Any] | None = None
    nodes: list[Node] = Field(default_factory=list)
    gates: dict[str, Gate] = Field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    def ran_on(self, transport: Any) -> None:
        """Note the device the run's session opened (a transport: its ``name``)."""
        self.device = transport.name

    @classmethod
    def new(
        cls, run_id: str, command: list[str], target: dict[str, Any], recipe: dict[str, Any]
    ) -> RunRecord:
        """Start a record for a run on this host (status ``running``)."""
        return cls(
            run_id=run_id,
            created=now_iso(),
            command=list(command),
            target=target,
            recipe=recipe,
            host=host_facts(),
            git_commit=git_commit(),
        )

    def add(self, node: Node) -> Node:
        """Append a node and return it."""
        self.nodes.append(node)
        return node

    def child(self, stage: str, config: dict[str, Any], **fields: Any) -> Node:
        """Create a node chained to the last one (same target) and add it.

        Example:
            >>> rec = RunRecord.new("r1", [], {"name": "local"}, {})
            >>> a = rec.child("export", {"opset": 17})
            >>> rec.child("build", {"backend": "onnxruntime"}).parent == a.id
            True
        """
        parent = self.nodes[-1].id if self.nodes else None
        return self.add(Node.create(stage, config, parent, self.target, **fields))

    def node(self, stage: str) -> Node | None:
        """Return the last node of ``stage`` (exact name), or None if the run has none."""
        return next((n for n in reversed(self.nodes) if n.stage == stage), None)

    def pareto(self, cost: str | None = None) -> list[Node]:
        """Return the nodes on the accuracy-vs-cost front, cheapest first.

        Accuracy is ``map50_95``. A node is on the front when no other node is at least as accurate and at
        most as costly, and strictly better in one of the two. Nodes lacking either figure are left out.

        Args:
            cost: One of ``macs``, ``params``, ``size_bytes``, ``latency_ms_p50``. By default the first of
                these (in that order) that any node with an accuracy reports.
        """
        scored = [n for n in self.nodes if n.metric("map50_95") is not None]
        if cost is None:
            cost = next((k for k in COST_KEYS if any(n.metric(k) is not None for n in scored)), None)
            if cost is None:
                return []
        points = [(n.metric(cost), n.metric("map50_95"), n) for n in scored if n.metric(cost) is not None]
        front = [
            (c, n)
            for c, a, n in points
            if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2, _ in points)
        ]
        return [n for _, n in sorted(front, key=lambda item: item[0])]

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON, atomically."""
        return atomic_write_json(path, self.model_dump(mode="json", by_alias=True))

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read a record written by :meth:`save`.

        Raises:
            DataError: The file is missing, is not JSON, or is not an edgekit run record.
        """
        path = Path(path)
        hint = "give the run folder of an `edgekit deploy` run (it holds record.json)"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"run record {path} does not exist", hint) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"run record {path} is not readable JSON: {exc}", hint) from exc
        if not isinstance(data, dict) or "run_id" not in data or "nodes" not in data:
            raise DataError(f"{path} is not an edgekit run record (no run_id/nodes)", hint)
        if data.get("schema") != SCHEMA_VERSION:
            raise DataError(
                f"run record {path} has schema {data.get('schema')!r}; this edgekit reads {SCHEMA_VERSION}",
                "render it with the edgekit version that wrote it",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DataError(f"run record {path} is malformed: {exc.errors()[0]['msg']}", hint) from exc
