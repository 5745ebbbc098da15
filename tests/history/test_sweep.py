"""`edgekit sweep` on a local Ray: a 2 x 2 grid over this host and a fleet of two real SSH boards of one
kind (sshd on this machine, each in its own network namespace). One board is killed mid-sweep (its item is
retried on the other), a re-run resumes, a worker is killed mid-item (Ray runs it again), a regression
against a seeded baseline fails the sweep, and Ctrl-C leaves no run folder half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from edgekit.core.errors import ConfigError
from tests.conftest import TRAIN_SCALE
from tests.device.sshbed import SKIP_NO_SSHD, SshServer, _children, netns_available, sshd_available
from tests.history.test_history import _seed

REPO = Path(__file__).resolve().parents[2]
ray = pytest.importorskip("ray", reason="Ray is not installed (make venv installs the fleet extra)")
pytestmark = pytest.mark.skipif(not sshd_available(), reason=SKIP_NO_SSHD)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with this machine's two cores and the module's boards (this host and the fleet's two),
    each one unit of its Ray resource, started once for the module."""
    from edgekit.fleet.boards import board_resource

    boards = {board_resource(name): 1 for name in ("local", "board-a", "board-b")}
    ray.init(num_cpus=2, resources=boards, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two boards of one kind (sshd in a network namespace each, with its own address, where this host
    allows it; else on 127.0.0.1; this host's Python), a target for them, and a fleet file."""
    root = tmp_path_factory.mktemp("fleet")
    netns = netns_available()
    servers = [SshServer(root / name, netns=netns) for name in ("board-a", "board-b")]
    for srv in servers:
        srv.start()
    local = yaml.safe_load((REPO / "targets" / "local.yaml").read_text())
    runtime = {"threads": 1, "warmup": 3, "min_warmup_s": 0.0, "iterations": 20, "min_seconds": 0.0}
    conn = {"type": "ssh", "host": servers[0].host, "user": servers[0].user}
    target = {**local, "name": "x86-fleet", "board": "x86-box", "description": "a fleet of x86 boxes",
              "connection": conn, "runtime": runtime, "cpu": {"features": "probe"}}  # fmt: skip
    (root / "x86-fleet.yaml").write_text(yaml.safe_dump(target))
    boards = [
        {"name": srv.folder.name, "board": "x86-box", "connection": {
            "type": "ssh", "host": srv.host, "port": srv.port, "user": srv.user,
            "key_file": str(srv.key_file), "known_hosts": str(srv.known_hosts), "python": sys.executable,
            "workdir": str(srv.folder),
            "connect_timeout": 3.0, "retries": 2, "dead_after_s": 4.0}}
        for srv in servers
    ]  # fmt: skip
    (root / "fleet.yaml").write_text(yaml.safe_dump({"boards": boards}))
    yield root, servers
    for srv in servers:
        srv.close()


def _sweep(root: Path, shapes_root, **kw) -> Path:
    spec = {
        "name": "grid", "models": ["builtin"], "recipes": ["none"],
        "targets": ["local", str(root / "x86-fleet.yaml")], "calibrators": ["minmax", "entropy"],
        "fleet": "fleet.yaml", "data": str(shapes_root), "epochs_scale": TRAIN_SCALE, **kw,
    }  # fmt: skip
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runs_a_runner(pid: int) -> bool:
    """Whether a process under ``pid`` (a board's sshd) runs an edgekit runner (``*_run.py``): a bench."""
    todo = list(_children(pid))
    while todo:
        child = todo.pop()
        try:
            if b"_run.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
        except OSError:
            continue
        todo += _children(child)
    return False


def _plan(path: Path, out: Path):
    from edgekit.fleet.spec import load_sweep
    from edgekit.fleet.sweep import plan_sweep

    return plan_sweep(*load_sweep(path), out)


def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "record.json").read_text())["status"]


@pytest.fixture(scope="module")
def grid(cluster, fleet, shapes_root, trained):
    """The 2 x 2 sweep, board A killed (sshd and its sessions) as soon as a bench opens a session on it."""
    from edgekit.fleet.sweep import run_sweep

    root, (a, _) = fleet
    out = root / "runs"
    plan = _plan(_sweep(root, shapes_root), out)
    killed = threading.Event()

    def kill_a_when_it_benches() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed.is_set():
            if a.proc is not None and _runs_a_runner(a.proc.pid):  # a bench is on board A (not the CPU probe)
                time.sleep(0.5)
                a.kill_all_sessions()  # sshd and every session on the board: the board is gone
                killed.set()
            time.sleep(0.1)

    held: set[str] = set()  # the boards whose Ray resource unit was seen in use

    def watch_the_units() -> None:
        while not done.is_set():
            free = ray.available_resources()
            held.update(r for r in ("local", "board-a", "board-b") if free.get(f"edgekit-board:{r}", 0) < 1)
            time.sleep(0.1)

    done = threading.Event()
    threads = [threading.Thread(target=t, daemon=True) for t in (kill_a_when_it_benches, watch_the_units)]
    for thread in threads:
        thread.start()
    lines: list[str] = []
    result = run_sweep(plan, say=lines.append)
    killed.set()
    done.set()
    for thread in threads:
        thread.join(5)
    return plan, result, lines, out, held


@pytest.mark.slow
def test_a_board_killed_mid_sweep_fails_its_item_which_is_retried_on_the_other_board(
    grid, fleet, shapes_root
):
    from edgekit.fleet.sweep import run_sweep
    from edgekit.history import History

    plan, result, lines, out, held = grid
    root, (a, _) = fleet
    assert held == {"local", "board-a", "board-b"}  # each bench held its board's Ray resource unit
    assert len(plan.items) == 4 and {i.kind for i in plan.items} == {"local", "x86-box"}
    assert a.proc is None, "board A was never used, so never killed"
    assert all(r["status"] == "ok" for r in result.items.values()), result.items
    fleet_items = [i for i in plan.items if i.kind == "x86-box"]
    retried = [i for i in fleet_items if (out / i.run_id("grid", 2)).is_dir()]
    assert len(retried) == 1, lines
    first, second = out / retried[0].run_id("grid", 1), out / retried[0].run_id("grid", 2)
    record = json.loads((first / "record.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] in ("bench", "build", "eval")
    assert "board-a" in (record.get("device") or "") and record["error"]["message"]
    done = json.loads((second / "record.json").read_text())
    assert _status(second) == "ok" and "board-b" in done["device"]
    # the fleet's target says `cpu: {features: probe}`: the run read the board's CPU and quantized for it
    assert done["target"]["cpu"]["source"].startswith("probed on ") and "board-b" in done["device"]
    quant = next(n for n in done["nodes"] if n["stage"] == "quantize")["extra"]
    assert quant["cpu_source"].startswith("probed on ")
    assert any("retrying" in line for line in lines)
    rows = History(out).runs(sweep="grid")
    assert len(rows) == 5 and sum(r.status == "ok" for r in rows) == 4
    summary = json.loads((out / "sweeps" / "grid.json").read_text())
    assert {i["status"] for i in summary["items"]} == {"ok"}
    # a re-run resumes: every item finished, nothing runs again
    again = run_sweep(_plan(_sweep(root, shapes_root), out), say=lines.append)
    assert all(r.get("skipped") for r in again.items.values())
    assert len(list(out.glob("grid-*"))) == 5


def test_a_ray_without_a_unit_of_every_board_is_refused_before_anything_runs(grid, tmp_path):
    import dataclasses

    from edgekit.fleet.boards import Board
    from edgekit.fleet.sweep import run_sweep

    plan = grid[0]
    extra = Board("board-c", "x86-box", plan.boards[-1].connection)
    bigger = dataclasses.replace(plan, boards=[*plan.boards, extra], out=tmp_path / "runs",
                                 spec=plan.spec.model_copy(update={"name": "bigger"}))  # fmt: skip
    with pytest.raises(ConfigError, match="edgekit-board:board-c") as err:
        run_sweep(bigger, say=lambda _: None)
    assert "ray.init(resources=" in err.value.hint
    assert not list((tmp_path / "runs").glob("bigger-*"))


@pytest.mark.slow
def test_a_worker_killed_mid_item_is_rescheduled_and_a_regression_fails_the_sweep(
    grid, fleet, shapes_root, capsys
):
    """One item (local, minmax) against a seeded baseline 5 points better; its worker is killed once."""
    from edgekit.cli import main

    root, _ = fleet
    out = grid[3]
    _seed(out / "grid-builtin-none-local-minmax", "seeded-better", map_gain=0.05,
          after=out / "grid-builtin-none-local-minmax")  # fmt: skip
    path = _sweep(root, shapes_root, name="nightly", targets=["local"], calibrators=["minmax"],
                  baseline="last", baseline_p99_rise=1e6)  # fmt: skip
    killed: list[int] = []

    def kill_the_worker_once() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = _workers("ray::run_item")
            if pids:
                time.sleep(2.0)
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    threading.Thread(target=kill_the_worker_once, daemon=True).start()
    code = main(["sweep", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert killed, "the item's worker was never seen"
    assert code == 3 and "regressed" in err and "map50_95" in err
    run = out / "nightly-builtin-none-local-minmax"
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "gates_failed" and record["baseline"]["baseline_id"] == "seeded-better"
    assert not (out / "nightly-builtin-none-local-minmax-try2").exists()  # Ray's retry, same run


def _workers(title: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(title.encode()):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_ctrl_c_stops_every_task_and_leaves_no_half_written_run_folder(fleet, shapes_root, trained, tmp_path):
    root, _ = fleet
    out = tmp_path / "runs"
    path = _sweep(root, shapes_root, name="stopped", targets=["local"], calibrators=["minmax", "entropy"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "sweep", str(path), "--out", str(out), "--cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(out.glob("stopped-*/record.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output
    folders = list(out.glob("stopped-*"))
    assert folders, output
    for folder in folders:
        status = _status(folder)
        assert status in ("ok", "interrupted", "failed"), (folder.name, status)
        if status != "ok":
            assert (folder / "summary.json").is_file() and (folder / "report.md").is_file()
    time.sleep(2.0)
    mine = [pid for pid in _workers("ray::") if not _descends_from(pid, os.getpid())]
    assert not mine, "the stopped sweep left Ray workers running"


def _descends_from(pid: int, ancestor: int) -> bool:
    """True when ``ancestor`` is a parent, grandparent, ... of ``pid`` (this test's own Ray is)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def test_a_sweep_naming_an_unknown_target_recipe_or_model_is_refused_before_anything_runs(tmp_path):
    from edgekit.fleet.spec import load_sweep
    from edgekit.fleet.sweep import plan_sweep

    path = tmp_path / "bad.yaml"
    bad = {"name": "bad", "targets": ["no-such-board", "local"], "recipes": ["none", "no-such-recipe"],
           "models": ["missing.onnx"]}  # fmt: skip
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        plan_sweep(*load_sweep(path), tmp_path / "runs")
    for named in ("no-such-board", "no-such-recipe", "missing.onnx"):
        assert named in err.value.message
    assert not (tmp_path / "runs").exists()
    path.write_text(yaml.safe_dump({"name": "bad", "targets": ["local"], "baseline": "no-such-run"}))
    with pytest.raises(ConfigError) as err:
        plan_sweep(*load_sweep(path), tmp_path / "runs")
    assert "baseline:" in err.value.hint and "--baseline" not in err.value.hint + err.value.message
    path.write_text(yaml.safe_dump({"name": "bad", "targets": ["local"], "recipe": ["none"]}))
    with pytest.raises(ConfigError, match="recipe: Extra inputs"):
        load_sweep(path)


def test_the_example_sweep_plans_four_items_and_shares_the_compress_of_its_recipe():
    from edgekit.fleet.spec import load_sweep
    from edgekit.fleet.sweep import plan_sweep

    plan = plan_sweep(*load_sweep(REPO / "sweeps" / "example.yaml"), REPO / "runs")
    assert len(plan.items) == 4 and [b.name for b in plan.boards] == ["local"]
    followers = [i for i in plan.items if i.leader]
    assert len(followers) == 1 and followers[0].recipe.endswith("l1-short.yaml")
