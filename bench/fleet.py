"""Issue 45: sweeps on Ray across boards, measured on this host, one run (resumable by phase).

Boards: two real OpenSSH servers on 127.0.0.1 running this host's Python (a fleet of two x86 boxes of
one kind). The target is the local one pointed at them, with a bench of at least ``--seconds`` seconds
per item (as a real board's timed window is). Items: the built-in detector, no compression, INT8 with
``--items`` calibrators (each a separate deploy). Phases, each saved when done:

- ``loop``: the items as plain ``deploy()`` calls one after the other on board A (no Ray);
- ``ray1``: the same items as a sweep on Ray, one item at a time (``max_parallel=1``), one board: Ray's
  overhead is ray1 − loop;
- ``one`` / ``two``: the sweep on Ray with this host's CPUs and one board, then two boards (the speed-up a
  second board gives);
- ``dead``: two items on two boards, board A killed when its first bench starts: seconds from the kill to
  the item's retry on board B, and to its end there;
- ``dashboard``: 1,000 runs in an index (copies of one real run's record and summary): the index rebuilt,
  synced, the page rendered, and loaded in Chromium.

Both boards and Ray share this host's two cores, so the boards' speed-up is bounded by the host work
that runs beside the benches: the figures say what a sweep costs here, not what a farm of real boards
gives.

Usage: python bench/fleet.py [--items 4] [--seconds 20] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import RESULTS, save, table  # noqa: E402

from tests.device.sshbed import SshServer  # noqa: E402

STATE = RESULTS / "fleet-state.json"
CALIBRATORS = ("minmax", "entropy", "percentile", "default", "auto")


def _state(fresh: bool) -> dict:
    return {} if fresh or not STATE.exists() else json.loads(STATE.read_text())


def _keep(state: dict, key: str, value) -> None:
    state[key] = value
    STATE.write_text(json.dumps(state, indent=2))


def _boards(root: Path, seconds: float) -> tuple[list[SshServer], Path]:
    servers = [SshServer(root / name) for name in ("board-a", "board-b")]
    for srv in servers:
        srv.start()
    local = yaml.safe_load((REPO / "targets" / "local.yaml").read_text())
    a = servers[0]
    conn = {"type": "ssh", "host": a.host, "port": a.port, "user": a.user, "key_file": str(a.key_file),
            "known_hosts": str(a.known_hosts), "python": sys.executable,
            "workdir": str(a.folder)}  # fmt: skip
    runtime = {"threads": 1, "warmup": 20, "min_warmup_s": 0.5, "iterations": 200, "min_seconds": seconds}
    target = {**local, "name": "x86-box", "board": "x86-box", "description": "an x86 box of the bench fleet",
              "connection": conn, "runtime": runtime}  # fmt: skip
    (root / "x86-box.yaml").write_text(yaml.safe_dump(target))
    return servers, root / "x86-box.yaml"


def _fleet(root: Path, servers: list[SshServer], n: int) -> Path:
    boards = [
        {"name": s.folder.name, "board": "x86-box", "connection": {
            "type": "ssh", "host": s.host, "port": s.port, "user": s.user, "key_file": str(s.key_file),
            "known_hosts": str(s.known_hosts), "python": sys.executable, "workdir": str(s.folder),
            "connect_timeout": 3.0, "retries": 2, "dead_after_s": 4.0}}
        for s in servers[:n]
    ]  # fmt: skip
    path = root / f"fleet-{n}.yaml"
    path.write_text(yaml.safe_dump({"boards": boards}))
    return path


def _sweep(root: Path, name: str, target: Path, calibrators: list[str], fleet: Path | None, cpus: int,
           say=lambda _: None, max_parallel: int | None = None) -> dict:  # fmt: skip
    import ray

    from edgekit.fleet.spec import load_sweep
    from edgekit.fleet.sweep import board_resources, plan_sweep, run_sweep

    spec = {"name": name, "models": ["builtin"], "recipes": ["none"], "targets": [str(target)],
            "calibrators": calibrators, **({"fleet": str(fleet)} if fleet else {})}  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = plan_sweep(*load_sweep(path), root / "runs")
    start = time.monotonic()
    ray.init(num_cpus=cpus, resources=board_resources(plan.boards), include_dashboard=False,
             log_to_driver=False, configure_logging=False)  # fmt: skip
    ray_start = time.monotonic() - start
    try:
        result = run_sweep(plan, say=say, max_parallel=max_parallel)
    finally:
        ray.shutdown()
    wall = time.monotonic() - start
    bad = result.failed
    if bad:
        raise SystemExit(f"sweep {name}: items failed: {bad}")
    leases = json.loads(result.summary.read_text())["board_leases"]
    return {"wall_s": round(wall, 1), "ray_start_s": round(ray_start, 1), "benches_at_once": _overlap(leases),
            "bench_s": round(sum(x["to"] - x["from"] for x in leases if x["to"]), 1)}  # fmt: skip


def _overlap(leases: list[dict]) -> int:
    """The most board leases (benches) held at one time."""
    edges = sorted([(x["from"], 1) for x in leases] + [(x["to"], -1) for x in leases if x["to"]])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _loop(root: Path, target: Path, calibrators: list[str]) -> float:
    from edgekit.pipeline import DeployRequest, deploy

    start = time.monotonic()
    for cal in calibrators:
        deploy(DeployRequest(target=str(target), recipe="none", calibrator=None if cal == "default" else cal,
                             out=root / "loop", progress=False, run_id=f"loop-{cal}"))  # fmt: skip
    return time.monotonic() - start


def _dead(root: Path, servers: list[SshServer], target: Path) -> dict:
    fleet = _fleet(root, servers, 2)
    a = servers[0]
    marks: dict[str, float] = {}

    def killer() -> None:
        while "kill" not in marks:
            if a.proc is not None and [p for p in a.processes("sshd: ") if "@" in p]:
                time.sleep(1.0)
                a.kill_all_sessions()
                marks["kill"] = time.monotonic()
            time.sleep(0.05)

    def say(line: str) -> None:
        if "retrying" in line and "retry" not in marks:
            marks["retry"] = time.monotonic()

    threading.Thread(target=killer, daemon=True).start()
    _sweep(root, "dead", target, ["minmax", "entropy"], fleet, 2, say)
    end = time.monotonic()
    return {"kill_to_retry_s": round(marks["retry"] - marks["kill"], 1),
            "kill_to_sweep_end_s": round(end - marks["kill"], 1)}  # fmt: skip


def _dashboard(root: Path, run_dir: Path, n: int = 1000) -> dict:
    from edgekit.history import History
    from edgekit.history.dashboard import write_dashboard

    runs = root / "many"
    record = json.loads((run_dir / "record.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    for i in range(n):
        folder = runs / f"r{i:04d}"
        folder.mkdir(parents=True)
        record.update(run_id=folder.name, created=f"2026-{1 + i // 100 % 12:02d}-{1 + i % 28:02d}T10:00:00")
        summary.update(run_id=folder.name)
        summary["deployed"]["map50_95"] = 0.6 + (i % 17) / 1000
        (folder / "record.json").write_text(json.dumps(record))
        (folder / "summary.json").write_text(json.dumps(summary))
    history = History(runs)
    t0 = time.monotonic()
    history.rebuild()
    t1 = time.monotonic()
    history.sync()
    t2 = time.monotonic()
    page = write_dashboard(history, runs / "dashboard.html")
    t3 = time.monotonic()
    out = {"runs": n, "rebuild_s": round(t1 - t0, 3), "sync_s": round(t2 - t1, 3),
           "render_s": round(t3 - t2, 3), "page_kb": round(page.stat().st_size / 1024)}  # fmt: skip
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            tab = browser.new_page()
            start = time.monotonic()
            tab.goto(page.as_uri(), wait_until="load")
            out["browser_load_s"] = round(time.monotonic() - start, 3)
            out["circles"] = tab.locator("svg circle").count()
            browser.close()
    except Exception as exc:  # noqa: BLE001 - a bench reports what it could not measure
        out["browser_load_s"] = None
        out["browser_note"] = f"not measured: {exc}"
    return out


def _after_start(state: dict) -> float | None:
    """Ray's overhead against the loop once Ray is up (its start measured apart), in %."""
    start = state["ray1"].get("ray_start_s")
    if start is None:
        return None
    return round((state["ray1"]["wall_s"] - start - state["loop"]) / state["loop"] * 100, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    state = _state(args.fresh)
    calibrators = list(CALIBRATORS[: args.items])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers, target = _boards(root, args.seconds)
        try:
            if not {"loop", "ray1", "one", "two"} <= set(state):  # data, calibration set, caches: untimed
                _loop(root, target, calibrators[:1])
                shutil.rmtree(root / "loop")
            if "loop" not in state:
                _keep(state, "loop", round(_loop(root, target, calibrators), 1))
            for phase, boards, cpus, most in (("ray1", 1, 1, 1), ("one", 1, 2, None), ("two", 2, 2, None)):
                if phase not in state:
                    fleet = _fleet(root, servers, boards)
                    _keep(
                        state, phase, _sweep(root, phase, target, calibrators, fleet, cpus, max_parallel=most)
                    )
            if "dead" not in state:
                _keep(state, "dead", _dead(root, servers, target))
            if "dashboard" not in state:
                run = next((root / "loop").glob("loop-*"), None)
                _keep(state, "dashboard", _dashboard(root, run) if run else {"note": "no loop run to copy"})
        finally:
            for srv in servers:
                srv.close()
    n = len(calibrators)
    result = {
        "items": n, "bench_seconds": args.seconds, **state,
        "ray_overhead_pct": round((state["ray1"]["wall_s"] - state["loop"]) / state["loop"] * 100, 1),
        "ray_overhead_after_start_pct": _after_start(state),
        "two_boards_speedup": round(state["one"]["wall_s"] / state["two"]["wall_s"], 2),
    }  # fmt: skip
    save("fleet", result)
    print(table(["measure", "value"], [[k, v] for k, v in result.items() if not isinstance(v, dict)]))
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
