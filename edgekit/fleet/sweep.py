"""``edgekit sweep``: a grid of deploys run on Ray, one bench per board at a time.

Each item is one deploy in a Ray task (one CPU; host stages run side by side on whatever CPUs the
cluster has), writing its own run folder ``<runs>/<sweep>-<item>``. Its device session leases a board
from the sweep's :class:`~edgekit.fleet.boards.BoardPool` when it first needs one. Items of one model
and a compressing recipe share their compress work through the content-hash cache: the first of them
compresses, the others start when it is done and find the result cached. Every run is indexed in the
run history, with the sweep's name.

Faults:

- A board whose link dies fails its item with the reason; the board is out for the rest of the sweep,
  and the item is tried again (a new run folder, ``-try2``) on another board of its kind, if one lives.
- A worker lost mid-stage (killed, out of memory) is retried by Ray; the new attempt clears the folder
  the dead one left ``running`` and starts the same run again (the compress cache keeps finished steps).
- Ctrl-C cancels every task: each running deploy stops as a deploy does on Ctrl-C (its folder says
  ``interrupted``); one that does not stop within the grace time is killed and its folder settled the same
  way. A re-run with the same name skips the items that finished (``ok`` or ``gates_failed``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.core.errors import ConfigError, EdgekitError
from edgekit.core.files import atomic_write_json
from edgekit.fleet.boards import Board, BoardPool, board_kind, board_resource, boards_for
from edgekit.fleet.item import FINISHED, Tracker, attempts, run_item, settle
from edgekit.fleet.spec import FleetSpec, Item, SweepSpec, grid, model_tag

#: Seconds a cancelled deploy gets to stop by itself (Ctrl-C) before its worker is killed.
CANCEL_GRACE_S = 30.0


@dataclasses.dataclass
class SweepPlan:
    """A sweep resolved: its items and every board they may lease."""

    spec: SweepSpec
    items: list[Item]
    boards: list[Board]
    requests: dict[str, dict[str, Any]]
    out: Path

    def describe(self) -> dict[str, Any]:
        """A plain view for ``--dry-run``."""
        return {
            "sweep": self.spec.name,
            "out": str(self.out),
            "items": [
                {
                    "id": i.id,
                    "model": i.model,
                    "recipe": i.recipe,
                    "target": i.target,
                    "calibrator": i.calibrator,
                    "device": i.device,
                    "board kind": i.kind,
                    **({"after": i.leader} if i.leader else {}),
                }
                for i in self.items
            ],  # fmt: skip
            "boards": {b.name: b.kind for b in self.boards},
        }


def _abs(path: str | None) -> str | None:
    """A path made absolute for the workers (they need not share this process's folder)."""
    if path is None or path == "builtin" or (":" in path and not Path(path).exists()):
        return path
    return str(Path(path).resolve())


def plan_sweep(spec: SweepSpec, fleet: FleetSpec | None, out: str | Path) -> SweepPlan:
    """Plan every item as ``edgekit deploy --dry-run`` would, before anything runs.

    Raises:
        ConfigError: Any item cannot be planned (an unknown target, recipe or model, a calibrator its
            backend lacks, ...): every problem is listed, and nothing ran.
    """
    from edgekit.compress.recipe import load_recipe
    from edgekit.pipeline import DeployRequest, make_plan

    check_fleet_names(fleet)
    out = Path(out).resolve()
    if spec.baseline:
        from edgekit.history.gates import check_spec

        check_spec(out, spec.baseline, key="the sweep file's baseline:")
    fleet_kinds = {b.board for b in fleet.boards} if fleet else set()
    items: list[Item] = []
    requests: dict[str, dict[str, Any]] = {}
    boards: dict[str, Board] = {}
    leaders: dict[tuple, str] = {}
    problems: dict[str, list[str]] = {}
    targets: dict[str, Any] = {}
    for model, recipe, entry, calibrator in grid(spec):
        cell = f"{model} × {recipe} × {entry.name} × {calibrator}"
        try:
            target = targets.get(entry.name) or _fleet_target(entry.name, fleet)
        except EdgekitError as exc:
            problems.setdefault(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""), []).append(cell)
            continue
        targets[entry.name] = target
        kwargs = dict(
            target=target, model=_abs(model), recipe=_abs(recipe) if recipe.endswith(".yaml") else recipe,
            calibrator=None if calibrator == "default" else calibrator, max_drop=spec.max_drop,
            data=_abs(spec.data), images=_abs(spec.images), device=entry.device, out=out,
            epochs_scale=spec.epochs_scale, reference=spec.reference, baseline=spec.baseline,
            baseline_map_drop=spec.baseline_map_drop, baseline_p99_rise=spec.baseline_p99_rise,
            sweep=spec.name, calib_root=Path("calibration").resolve(),
        )  # fmt: skip
        try:
            plan = make_plan(DeployRequest(**kwargs, progress=False))
        except EdgekitError as exc:
            problems.setdefault(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""), []).append(cell)
            continue
        calib = calibrator if plan.int8 is not None else "default"
        item_id = f"{model_tag(model)}-{Path(recipe).stem}-{plan.target.name}-{calib}"
        if item_id in requests:
            continue  # an fp32 target takes one calibrator: the cells that differ only there are one item
        kind = board_kind(plan.target, entry.device, fleet_kinds)
        for b in boards_for(kind, plan.target, fleet):
            boards.setdefault(b.name, b)
        leader = None
        if load_recipe(kwargs["recipe"]).torch_steps():
            key = (model, recipe)
            leader = leaders.setdefault(key, item_id)
            leader = None if leader == item_id else leader
        item = Item(item_id, model, recipe, plan.target.name, calib, entry.device, kind, leader)
        items.append(item)
        requests[item_id] = {**kwargs, "calibrator": kwargs["calibrator"] if calib != "default" else None}
    for problem in _check_boards(list(boards.values())):
        problems.setdefault(problem, []).append("the fleet")
    if problems:
        raise ConfigError(
            f"sweep {spec.name} refused, nothing ran ({len(problems)} problem(s)): "
            + " | ".join(
                f"{msg} [in {len(cells)} of the grid's cells, e.g. {cells[0]}]"
                for msg, cells in problems.items()
            ),
            "fix the sweep file (targets: `edgekit targets`; recipes: the recipes/ folder), then run it "
            "again",
        )
    return SweepPlan(spec, items, list(boards.values()), requests, out)


def _fleet_target(name: str, fleet: FleetSpec | None) -> Any:
    """The target ``name``; where the fleet has boards of its kind, it names the first of them."""
    from edgekit.core.config import load_target

    target = load_target(name)
    boards = [b for b in (fleet.boards if fleet else []) if b.board == target.board]
    if boards and target.connection.type == "ssh":
        target = target.model_copy(update={"connection": boards[0].connection})
    return target


def _check_boards(boards: list[Board]) -> list[str]:
    """Each fleet board's key and known_hosts files exist (before any work)."""
    from edgekit.core.config import SSHConnection
    from edgekit.device.ssh import SSHTransport

    problems = []
    for board in boards:
        if board.connection is not None:
            try:
                SSHTransport.from_connection(SSHConnection(**board.connection)).check_files()
            except EdgekitError as exc:
                problems.append(f"board {board.name}: {exc.message}")
    return problems


# --- the sweep ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    """What a sweep did: each item's last attempt, and where its summary was written."""

    name: str
    items: dict[str, dict[str, Any]]
    summary: Path
    wall_s: float

    @property
    def failed(self) -> list[str]:
        """Items that did not finish ``ok``."""
        return [i for i, r in self.items.items() if r.get("status") != "ok"]


def _line(plan: SweepPlan, state: dict[str, str], start: float) -> str:
    counts = Counter(state.values())
    per = []
    for target in dict.fromkeys(i.target for i in plan.items):
        mine = Counter(state[i.id] for i in plan.items if i.target == target)
        per.append(f"{target} {mine['ok'] + mine['gates_failed'] + mine['skipped']}/{sum(mine.values())}")
    done = counts["ok"] + counts["gates_failed"] + counts["skipped"]
    return (
        f"[sweep {time.monotonic() - start:6.0f} s] done {done}/{len(state)} · running {counts['running']} · "
        f"queued {counts['queued']} · failed {counts['failed'] + counts['interrupted']} | " + " · ".join(per)
    )


def run_sweep(
    plan: SweepPlan,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    say: Callable[[str], None] = print,
    command: list[str] | None = None,
    max_parallel: int | None = None,
) -> SweepResult:
    """Run the plan's unfinished items on Ray (an embedded one unless ``address`` names a cluster).

    ``max_parallel`` caps the items in flight (default: as many as Ray's CPUs take); 1 runs them one after
    the other, as a plain loop would.
    """
    import ray

    spec, out = plan.spec, plan.out
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    next_attempt: dict[str, int] = {}
    for item in plan.items:
        n, done = attempts(out, spec.name, item)
        next_attempt[item.id] = n + 1
        state[item.id] = "skipped" if done else "queued"
        if done:
            results[item.id] = {"item": item.id, "status": done, "skipped": True,
                                "run_id": item.run_id(spec.name, n)}  # fmt: skip
    if any(s == "skipped" for s in state.values()):
        say(f"resuming {spec.name}: {sum(s == 'skipped' for s in state.values())} item(s) finished earlier")
    start = time.monotonic()
    if all(s == "skipped" for s in state.values()):
        return SweepResult(spec.name, results, _write_summary(plan, results, 0.0), 0.0)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
            log_to_driver=False, configure_logging=False,
            resources=board_resources(plan.boards) if address is None else None,
        )  # fmt: skip
    try:
        _check_resources(ray, plan, own_ray=started_here)
    except ConfigError:
        if started_here:
            ray.shutdown()
        raise
    task = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)(run_item)
    pool = ray.remote(BoardPool).remote(plan.boards)
    tracker = ray.remote(Tracker).remote()
    by_id = {i.id: i for i in plan.items}
    refs: dict[Any, str] = {}
    tries: dict[str, int] = Counter()

    def submit(item: Item) -> None:
        attempt = next_attempt[item.id]
        next_attempt[item.id] += 1
        payload = {
            "item": item.id, "run_id": item.run_id(spec.name, attempt), "kind": item.kind,
            "request": plan.requests[item.id], "command": command or ["edgekit", "sweep", spec.name],
        }  # fmt: skip
        refs[task.remote(payload, pool, tracker)] = item.id
        state[item.id] = "queued"

    def ready(item: Item) -> bool:
        if max_parallel is not None and len(refs) >= max_parallel:
            return False
        return item.leader is None or state.get(item.leader) not in ("queued", "running")

    try:
        for item in plan.items:
            if state[item.id] == "queued" and ready(item):
                submit(item)
        last = ""
        while refs or any(s == "queued" for s in state.values()):
            done, _ = ray.wait(list(refs), num_returns=1, timeout=1.0) if refs else ([], [])
            running = ray.get(tracker.snapshot.remote())
            for ref_id in refs.values():
                if ref_id in running:
                    state[ref_id] = "running"
            for ref in done:
                item_id = refs.pop(ref)
                res = _result(ref, item_id)
                results[item_id] = res
                state[item_id] = res["status"] if res["status"] in FINISHED else "failed"
                say(_event(res))
                if res.get("retry") and tries[item_id] < spec.retries:
                    tries[item_id] += 1
                    say(f"  retrying {item_id} on another {by_id[item_id].kind} board")
                    submit(by_id[item_id])
            for item in plan.items:
                waiting = state[item.id] == "queued" and item.id not in refs.values()
                if waiting and ready(item):
                    submit(item)
            line = _line(plan, state, start)
            if line.split("]", 1)[1] != last:
                say(line)
                last = line.split("]", 1)[1]
        timeline = ray.get(pool.timeline.remote())
    except KeyboardInterrupt:
        say(f"stopping the sweep: cancelling {len(refs)} task(s) (finished items are kept)")
        _cancel(ray, refs, out, spec.name, plan)
        raise
    finally:
        if started_here:
            ray.shutdown()
    summary = _write_summary(plan, results, time.monotonic() - start, timeline)
    return SweepResult(spec.name, results, summary, round(time.monotonic() - start, 1))


def board_resources(boards: list[Board]) -> dict[str, float]:
    """The Ray resources a sweep's boards are: one unit each (for ``ray.init(resources=...)``)."""
    return {board_resource(b.name): 1.0 for b in boards}


def _check_resources(ray: Any, plan: SweepPlan, own_ray: bool) -> None:
    """Refuse, before any item runs, a Ray that does not declare one unit of every board of the plan.

    ``own_ray``: the sweep started this Ray (else its caller did, and the hint says how to declare them).
    """
    have = ray.cluster_resources()
    missing = {r: 1 for r in board_resources(plan.boards) if have.get(r, 0) < 1}
    if not missing:
        return
    declare = json.dumps(missing)
    if not own_ray:
        hint = (
            f"start Ray with ray.init(resources={declare}) (edgekit.fleet.sweep.board_resources(plan.boards))"
        )
    else:
        hint = (
            "declare each board on the Ray node wired to it "
            f"(ray start --address=... --resources='{declare}'), or run the sweep without --address "
            "(its embedded Ray declares them)"
        )
    raise ConfigError(
        f"the Ray cluster has no unit of {', '.join(missing)}: each board is one unit of a Ray resource, "
        "so that one board never runs two benches; nothing ran",
        hint,
    )


def _result(ref: Any, item_id: str) -> dict[str, Any]:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task itself failed (its worker died past the retries)
        return {"item": item_id, "status": "failed", "error": f"the task failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"}  # fmt: skip


def _event(res: dict[str, Any]) -> str:
    where = f" on {res['device']}" if res.get("device") else ""
    if res["status"] == "ok":
        return f"  ok      {res['item']} ({res['run_id']}{where}, {res.get('seconds', 0):.0f} s)"
    if res["status"] == "gates_failed":
        return f"  REGRESSED {res['item']}: {', '.join(res.get('regressions') or []) or res.get('error')}"
    return f"  {res['status'].upper():7} {res['item']}{where}: {res.get('error')}"


def _cancel(ray: Any, refs: dict[Any, str], out: Path, sweep: str, plan: SweepPlan) -> None:
    for ref in refs:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + CANCEL_GRACE_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
    for ref in pending:
        ray.cancel(ref, force=True)
    for item in plan.items:
        n, _ = attempts(out, sweep, item)
        if n:
            settle(out / item.run_id(sweep, n), "the sweep was stopped (Ctrl-C) while this run was going")


def _write_summary(
    plan: SweepPlan, results: dict[str, dict[str, Any]], wall_s: float, leases: list | None = None
) -> Path:
    items = [
        {**results.get(i.id, {"status": "not run"}), "item": i.id, "target": i.target, "recipe": i.recipe,
         "model": i.model, "calibrator": i.calibrator}
        for i in plan.items
    ]  # fmt: skip
    return atomic_write_json(
        plan.out / "sweeps" / f"{plan.spec.name}.json",
        {"sweep": plan.spec.name, "wall_s": round(wall_s, 1), "items": items, "board_leases": leases or []},
    )


def check_fleet_names(fleet: FleetSpec | None) -> None:
    """Refuse a fleet whose boards clash with the built-in board names (``local``, ``sim:*``)."""
    if fleet is None:
        return
    bad = [b.name for b in fleet.boards if b.name == "local" or b.name.startswith("sim:")]
    if bad:
        raise ConfigError(
            f"fleet board names {bad} are reserved", "rename them (local and sim:* are edgekit's)"
        )
