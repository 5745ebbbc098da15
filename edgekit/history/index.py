"""The run history: every run folder under a runs root, indexed in SQLite (``<runs>/history.sqlite``).

The run folders stay the truth. The index holds, per run, the figures its ``summary.json`` has and the
keys a query or a regression gate needs: target, board and device, backend, precision, the model's and
the calibration set's sha256, recipe, edgekit version, git commit, time and (for a sweep's items) the
sweep. Each read syncs the index with the folders first (a ``stat`` of each ``summary.json``: new and
changed runs are indexed, removed ones dropped), so a run written while the index was away is never
missed. An index that is lost, corrupt or of another schema is rebuilt from the folders, in a temporary
file renamed into place.

Several processes may write at once (a sweep's workers): SQLite's file lock serialises them, each
write in one short transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgekit.core.errors import ConfigError
from edgekit.core.files import stable_hash

DB_NAME = "history.sqlite"
#: Bumped when the table changes; an index of another version is rebuilt from the run folders.
SCHEMA = 1
_LOCK_TIMEOUT_S = 60.0


@dataclass
class RunRow:
    """One run as the index holds it (``None``: not measured, or not known for that run).

    ``calibrator`` is the INT8 calibration asked for (``default``, ``auto`` or a method; ``None``: not INT8).
    ``device`` says which board of its kind ran it: ``local``, the SSH host, or ``sim:<board>``.
    ``p99_noise_ms`` is the bench's latency standard deviation, the noise a timing gate must exceed.
    """

    run_id: str
    folder: str
    created: str
    status: str
    failed_stage: str | None = None
    target: str | None = None
    board: str | None = None
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    recipe: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    calib_name: str | None = None
    calibrator: str | None = None
    calib_sha256: str | None = None
    edgekit_version: str | None = None
    git_commit: str | None = None
    sweep: str | None = None
    metric: str | None = None
    ref_map50_95: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p99_noise_ms: float | None = None
    fps: float | None = None
    emulator: str | None = None
    emulator_p50_ms: float | None = None
    emulator_p99_ms: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    artifact_bytes: int | None = None
    params: float | None = None
    macs: float | None = None
    seconds: float | None = None
    mtime_ns: int = 0

    @classmethod
    def columns(cls) -> list[str]:
        """The table's columns, in order."""
        return [f.name for f in fields(cls)]

    def key(self) -> tuple:
        """What makes two runs one item: target, board kind, model, recipe, calibration set, calibrator."""
        return (self.target, self.board, self.model_sha256, self.recipe, self.calib_name, self.calibrator)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _model(nodes: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The model a run started from: its label and sha256 (a user ONNX's, or the trained weights')."""
    for node in nodes:
        if node.get("stage") not in ("model", "train"):
            continue
        config, outputs = node.get("config") or {}, node.get("outputs") or {}
        digest = config.get("sha256") or next(iter(outputs.values()), None)
        if digest is None:  # a torch factory without a weights file: its settings name it
            digest = stable_hash(config, 64)
        return node.get("label"), digest
    return None, None


def _device(target: dict[str, Any], opened: str | None) -> str:
    """Which board of its kind ran the run: the transport the run opened, else what its target names."""
    if target.get("emulator"):
        return f"sim:{target.get('board')}"
    if opened:
        return opened.removeprefix("ssh://")
    conn = target.get("connection") or {}
    if conn.get("type") == "ssh":
        return str(conn.get("host"))
    return str(conn.get("type") or "local")


def read_run(run_dir: Path, root: Path) -> RunRow | None:
    """The index row of ``run_dir`` from its ``record.json`` and ``summary.json`` (``None``: not a run)."""
    summary_path, record_path = run_dir / "summary.json", run_dir / "record.json"
    try:
        mtime = summary_path.stat().st_mtime_ns
        summary = json.loads(summary_path.read_text())
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(record, dict) or "run_id" not in record:
        return None
    return row_of(record, summary, os.path.relpath(run_dir, root), mtime)


def row_of(record: dict[str, Any], summary: dict[str, Any], folder: str, mtime_ns: int = 0) -> RunRow:
    """The index row of a run from its record and summary (as their JSON files hold them)."""
    nodes = record.get("nodes") or []
    target = record.get("target") or {}
    bench = next((n for n in nodes if n.get("stage") == "bench"), None)
    stats = ((bench or {}).get("metrics") or {}).get("latency_ms") or {}
    latency, emu = summary.get("latency_ms") or {}, summary.get("emulator_time_ms") or {}
    deployed, calib = summary.get("deployed") or {}, summary.get("calibration") or {}
    label, digest = _model(nodes)
    return RunRow(
        run_id=str(record["run_id"]),
        folder=folder,
        created=str(record.get("created") or ""),
        status=str(summary.get("status") or record.get("status") or "unknown"),
        failed_stage=record.get("failed_stage"),
        target=summary.get("target"),
        board=target.get("board"),
        device=_device(target, record.get("device")),
        backend=summary.get("backend"),
        precision=summary.get("precision"),
        recipe=summary.get("recipe"),
        model=label,
        model_sha256=digest,
        calib_name=calib.get("name"),
        calibrator=record.get("calibrator"),
        calib_sha256=calib.get("sha256"),
        edgekit_version=record.get("edgekit_version"),
        git_commit=record.get("git_commit"),
        sweep=record.get("sweep"),
        metric=summary.get("metric"),
        ref_map50_95=_num((summary.get("reference") or {}).get("map50_95")),
        map50=_num(deployed.get("map50")),
        map50_95=_num(deployed.get("map50_95")),
        p50_ms=_num(latency.get("p50")),
        p99_ms=_num(latency.get("p99")),
        p99_noise_ms=_num(stats.get("std")) if not summary.get("emulator") else None,
        fps=_num(summary.get("fps")),
        emulator=summary.get("emulator"),
        emulator_p50_ms=_num(emu.get("p50")),
        emulator_p99_ms=_num(emu.get("p99")),
        power_w=_num(summary.get("power_w")),
        energy_mj=_num(summary.get("energy_mj_per_inference")),
        artifact_bytes=int(deployed["artifact_bytes"]) if _num(deployed.get("artifact_bytes")) else None,
        params=_num(deployed.get("params")),
        macs=_num(deployed.get("macs")),
        seconds=sum(_num(n.get("seconds")) or 0.0 for n in nodes) or None,
        mtime_ns=mtime_ns,
    )


def _run_dirs(root: Path) -> Iterator[Path]:
    """The run folders under ``root``: folders holding a ``summary.json`` (temporary dot-folders skipped)."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        folder = Path(entry.path)
        if entry.is_dir() and not entry.name.startswith(".") and (folder / "summary.json").exists():
            yield folder


class History:
    """The run history of one runs root (``runs/`` by default).

    Example:
        >>> h = History("runs")  # doctest: +SKIP
        >>> [r.run_id for r in h.runs(target="local", limit=3)]  # doctest: +SKIP
        ['20261207-101500-local-default', ...]
    """

    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)
        self.path = self.root / DB_NAME
        #: Why the index was last rebuilt in this process (``None``: it was not).
        self.rebuilt: str | None = None

    # --- the database -------------------------------------------------------------------------------

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=_LOCK_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _create(self, db: sqlite3.Connection) -> None:
        cols = ", ".join(
            f"{c} {'TEXT PRIMARY KEY' if c == 'run_id' else ''}".strip() for c in RunRow.columns()
        )
        db.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        db.execute("CREATE INDEX IF NOT EXISTS runs_item ON runs (target, board, model_sha256, created)")
        db.execute("CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep)")
        db.execute(f"PRAGMA user_version = {SCHEMA}")

    def _problem(self) -> str | None:
        """Why the index on disk cannot be used as it is (``None``: it can)."""
        if not self.path.exists():
            return "no index yet"
        try:
            db = self._connect(self.path)
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if version != SCHEMA:
                    return f"index schema {version}, this edgekit writes {SCHEMA}"
                if check != "ok":
                    return f"index damaged ({check})"
                db.execute("SELECT run_id FROM runs LIMIT 1").fetchall()
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            return f"index unreadable ({exc})"
        return None

    def rebuild(self, reason: str = "asked to") -> int:
        """Index every run folder afresh into a new file, renamed over the old one; return the count."""
        if not self.root.is_dir():
            raise ConfigError(f"no runs folder at {self.root}", "give the folder deploys write to (--runs)")
        tmp = self.path.with_name(f".{DB_NAME}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        db = self._connect(tmp)
        try:
            self._create(db)
            rows = [r for r in (read_run(d, self.root) for d in _run_dirs(self.root)) if r is not None]
            db.execute("BEGIN")
            self._upsert(db, rows)
            db.execute("COMMIT")
        finally:
            db.close()
        os.replace(tmp, self.path)
        self.rebuilt = reason
        return len(rows)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        problem = self._problem()
        if problem is not None:
            if self.path.exists():  # keep the damaged file for a post-mortem, out of the way
                os.replace(self.path, self.path.with_name(f"{DB_NAME}.broken-{int(time.time())}"))
            self.rebuild(problem)
        db = self._connect(self.path)
        try:
            yield db
        finally:
            db.close()

    def _upsert(self, db: sqlite3.Connection, rows: list[RunRow]) -> None:
        cols = RunRow.columns()
        sql = f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        db.executemany(sql, [tuple(getattr(r, c) for c in cols) for r in rows])

    # --- writing ------------------------------------------------------------------------------------

    def add(self, run_dir: str | Path) -> RunRow | None:
        """Index (or re-index) one run folder; ``None`` when it holds no readable run."""
        row = read_run(Path(run_dir), self.root)
        if row is None:
            return None
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            self._upsert(db, [row])
            db.execute("COMMIT")
        return row

    def sync(self) -> tuple[int, int]:
        """Bring the index up to the folders: (runs indexed or re-read, runs dropped)."""
        with self._db() as db:
            known = {r["folder"]: r["mtime_ns"] for r in db.execute("SELECT folder, mtime_ns FROM runs")}
            seen, fresh = set(), []
            for run_dir in _run_dirs(self.root):
                folder = os.path.relpath(run_dir, self.root)
                seen.add(folder)
                try:
                    mtime = (run_dir / "summary.json").stat().st_mtime_ns
                except OSError:
                    continue
                if known.get(folder) != mtime:
                    row = read_run(run_dir, self.root)
                    if row is not None:
                        fresh.append(row)
            gone = [f for f in known if f not in seen]
            if fresh or gone:
                db.execute("BEGIN IMMEDIATE")
                self._upsert(db, fresh)
                db.executemany("DELETE FROM runs WHERE folder = ?", [(f,) for f in gone])
                db.execute("COMMIT")
        return len(fresh), len(gone)

    # --- reading ------------------------------------------------------------------------------------

    def runs(
        self,
        *,
        target: str | None = None,
        board: str | None = None,
        recipe: str | None = None,
        status: str | None = None,
        sweep: str | None = None,
        model: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        sync: bool = True,
    ) -> list[RunRow]:
        """Runs matching every filter given, newest first (``model``: a prefix of its sha256)."""
        if sync:
            self.sync()
        where, args = [], []
        for column, value in (("target", target), ("board", board), ("recipe", recipe), ("status", status),
                              ("sweep", sweep)):  # fmt: skip
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if model:
            where.append("model_sha256 LIKE ?")
            args.append(model.lower() + "%")
        if since:
            where.append("created >= ?")
            args.append(since)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC, run_id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._db() as db:
            return [_row(r) for r in db.execute(sql, args)]

    def get(self, run_id: str, *, sync: bool = True) -> RunRow | None:
        """The run ``run_id`` (``None`` if the index has no such run)."""
        if sync:
            self.sync()
        with self._db() as db:
            found = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _row(found) if found else None

    def count(self) -> int:
        """How many runs the index holds (without a sync)."""
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _row(r: sqlite3.Row) -> RunRow:
    return RunRow(**{k: r[k] for k in r.keys()})


def index_run(run_dir: Path) -> None:
    """Add the run to the run history of its runs root; a failure there is a warning, not a lost run."""
    try:
        History(run_dir.parent).add(run_dir)
    except (sqlite3.Error, OSError) as exc:
        warnings.warn(
            f"the run history in {run_dir.parent} did not take this run ({exc}); the run folder is "
            f"complete, and `edgekit history --runs {run_dir.parent}` indexes it on its next read",
            stacklevel=2,
        )
