"""One item of a sweep: its Ray task (a deploy on a leased board), its attempts and their run folders."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError
from edgekit.fleet.boards import Board, Lease
from edgekit.fleet.spec import Item

FINISHED = ("ok", "gates_failed")


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "record.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def attempts(out: Path, sweep: str, item: Item) -> tuple[int, str | None]:
    """How many attempts of ``item`` have run folders, and the status of the finished one (if any)."""
    n, done = 0, None
    while (out / item.run_id(sweep, n + 1)).exists():
        n += 1
        status = _status(out / item.run_id(sweep, n))
        if status in FINISHED:
            done = status
    return n, done


def settle(run_dir: Path, reason: str) -> None:
    """Leave no half-written run folder after a sweep is stopped.

    One still ``running`` (its worker gone) says ``interrupted``; one whose worker was stopped while writing
    its outputs gets its summary and report. A folder without a record, or whose record holds no finished
    stage, holds nothing and is removed.
    """
    from edgekit.history.index import index_run
    from edgekit.report.record import RunRecord
    from edgekit.report.render import render_run
    from edgekit.report.summary import build_summary, write_summary

    record_path = run_dir / "record.json"
    if not record_path.is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    record = RunRecord.load(record_path)
    written = (run_dir / "summary.json").is_file() and (run_dir / "report.md").is_file()
    if record.status != "running" and written:
        return
    if not record.nodes:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if record.status == "running":
        record.status = "interrupted"
        record.error = {"message": reason, "hint": "run the sweep again with the same name: it resumes"}
    record.summary = build_summary(record)
    record.save(record_path)
    write_summary(record, run_dir)
    render_run(run_dir)
    index_run(run_dir)


def run_item(payload: dict[str, Any], pool: Any, tracker: Any) -> dict[str, Any]:
    """One item's deploy (a Ray task); returns what happened, never raises for a run that failed."""
    import ray

    from edgekit.core.errors import GateError, HostUnreachableError
    from edgekit.pipeline import DeployRequest, make_plan, run_plan

    item_id, run_id, kind = payload["item"], payload["run_id"], payload["kind"]
    tracker.started.remote(item_id, os.getpid())
    kwargs = payload["request"]
    run_dir = Path(kwargs["out"]) / run_id
    if run_dir.exists() and _status(run_dir) in (None, "running"):
        shutil.rmtree(run_dir)  # left by this task's worker that died: Ray runs the task again
    start = time.monotonic()
    result: dict[str, Any] = {"item": item_id, "run_id": run_id, "status": "failed", "retry": False}
    lease: Lease | None = None
    try:
        plan = make_plan(DeployRequest(**kwargs, run_id=run_id, progress=False, command=payload["command"]))
        lease = Lease(pool, kind, item_id, plan.target)
        run_plan(dataclasses.replace(plan, transport_factory=lease))
        result["status"] = "ok"
    except GateError as exc:
        result.update(status="gates_failed", error=exc.message)
    except HostUnreachableError as exc:
        result["error"] = exc.message
        board = lease.board if lease is not None else None
        if board is not None:
            result["board"] = board.name
            result["retry"] = ray.get(pool.mark_dead.remote(board.name, exc.message))
    except EdgekitError as exc:
        result["error"] = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    except KeyboardInterrupt:
        result.update(status="interrupted", error="stopped (Ctrl-C)")
    except Exception as exc:  # noqa: BLE001 - a library error on a dying link, or a bug: the run says which
        result["error"] = f"{type(exc).__name__}: {exc}"
    board = lease.board if lease is not None else None
    if (
        result["status"] == "failed"
        and board is not None
        and not result.get("board")
        and not _reachable(board)
    ):
        # the run failed some other way (a file transfer cut, a library's own error) on a board now gone
        result["board"] = board.name
        reason = f"unreachable after: {result.get('error')}"
        result["retry"] = ray.get(pool.mark_dead.remote(board.name, reason))
    result["seconds"] = round(time.monotonic() - start, 1)
    if run_dir.is_dir():
        result["status"] = _status(run_dir) or result["status"]
        record = (
            json.loads((run_dir / "record.json").read_text()) if (run_dir / "record.json").exists() else {}
        )
        result["regressions"] = (record.get("baseline") or {}).get("regressions", [])
        result["device"] = record.get("device")
    tracker.finished.remote(item_id)
    return result


def _reachable(board: Board) -> bool:
    """Whether ``board`` still answers SSH (one quick attempt); this host and simulators always count."""
    if board.connection is None:
        return True
    from edgekit.core.config import SSHConnection
    from edgekit.core.errors import HostUnreachableError
    from edgekit.device.ssh import SSHTransport

    conn = SSHConnection(**{**board.connection, "retries": 1})
    try:
        with SSHTransport.from_connection(conn) as transport:
            transport.connect()
    except HostUnreachableError:
        return False
    except EdgekitError:
        return True  # it answered (a key or host-key problem is not a dead board)
    return True


class Tracker:
    """Which items are running, in which worker process (a Ray actor)."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}

    def started(self, item: str, pid: int) -> None:
        """An item's task began in process ``pid``."""
        self.running[item] = pid

    def finished(self, item: str) -> None:
        """An item's task ended."""
        self.running.pop(item, None)

    def snapshot(self) -> dict[str, int]:
        """``{item: worker pid}`` of the running items."""
        return dict(self.running)
