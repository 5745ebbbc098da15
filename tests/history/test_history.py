"""The run history: real deploys indexed, the index rebuilt from the folders, and regressions caught
against a baseline in it (a seeded one, a run id, a git ref)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edgekit.core.errors import ConfigError, GateError
from edgekit.history import History, Tolerances, gate_run
from edgekit.history.gates import compare
from edgekit.history.index import RunRow
from edgekit.pipeline import DeployRequest, deploy, make_plan
from tests.conftest import TRAIN_SCALE

CHROMIUM = Path("/usr/bin/chromium")


def _request(root: Path, shapes_root, **kw) -> DeployRequest:
    base = dict(
        target="local", recipe="none", data=str(shapes_root), epochs_scale=TRAIN_SCALE, out=root / "runs",
        calib_root=root / "calibration", progress=False, command=["test"],
    )  # fmt: skip
    return DeployRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def first(tmp_path_factory, shapes_root, trained):
    """One real deploy (local, INT8, no compression): run ``a`` of a fresh runs folder."""
    root = tmp_path_factory.mktemp("history")
    return deploy(_request(root, shapes_root, run_id="a"))


def _seed(run_dir: Path, run_id: str, *, map_gain: float, after: Path) -> Path:
    """A copy of ``run_dir`` as another run, made a second after ``after``, its mAP raised by ``map_gain``."""
    seeded = run_dir.parent / run_id
    shutil.copytree(run_dir, seeded)
    created = json.loads((after / "record.json").read_text())["created"]
    when = (datetime.fromisoformat(created) + timedelta(seconds=1)).isoformat(timespec="seconds")
    record = json.loads((seeded / "record.json").read_text())
    summary = json.loads((seeded / "summary.json").read_text())
    record.update(run_id=run_id, created=when)
    summary.update(run_id=run_id)
    summary["deployed"]["map50_95"] += map_gain
    (seeded / "record.json").write_text(json.dumps(record))
    (seeded / "summary.json").write_text(json.dumps(summary))
    return seeded


@pytest.mark.slow
def test_a_deploy_is_indexed_with_the_keys_a_gate_needs(first):
    summary = json.loads((first / "summary.json").read_text())
    row = History(first.parent).get("a")
    assert row is not None and row.status == "ok" and row.target == "local" and row.device == "local"
    assert row.map50_95 == summary["deployed"]["map50_95"] and row.p99_ms == summary["latency_ms"]["p99"]
    assert row.p99_noise_ms is not None and row.p99_noise_ms >= 0
    assert row.calib_sha256 == summary["calibration"]["sha256"] and row.calibrator == "default"
    record = json.loads((first / "record.json").read_text())
    weights = next(n for n in record["nodes"] if n["stage"] == "train")["outputs"]
    assert row.model_sha256 == next(iter(weights.values()))
    assert row.git_commit == record["git_commit"]
    assert row.energy_mj is None and row.emulator is None  # no sensor here: not measured, never 0


@pytest.mark.slow
def test_a_lost_or_damaged_index_is_rebuilt_from_the_run_folders(first, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(first, root / "a")
    history = History(root)
    assert [r.run_id for r in history.runs()] == ["a"] and history.rebuilt == "no index yet"
    history.path.write_bytes(b"this is not a database" * 100)
    again = History(root)
    assert [r.run_id for r in again.runs()] == ["a"]
    assert "unreadable" in again.rebuilt or "damaged" in again.rebuilt
    assert list(root.glob("history.sqlite.broken-*")), "the damaged file is kept aside"
    shutil.rmtree(root / "a")  # a folder removed by hand leaves the index on the next read
    assert History(root).runs() == []


@pytest.mark.slow
def test_a_regression_against_a_seeded_baseline_fails_the_deploy_after_writing_it(first, shapes_root):
    root = first.parent.parent
    _seed(first, "seeded", map_gain=0.05, after=first)  # 5 points better than this code can do
    with pytest.raises(GateError, match="baseline_map50_95"):
        deploy(_request(root, shapes_root, run_id="b", baseline="last"))
    b = first.parent / "b"
    record = json.loads((b / "record.json").read_text())
    assert record["status"] == "gates_failed"
    assert record["baseline"]["baseline_id"] == "seeded" and "map50_95" in record["baseline"]["regressions"]
    gate = record["gates"]["baseline_map50_95"]
    assert not gate["passed"] and gate["value"] == pytest.approx(5.0, abs=0.01) and gate["limit"] == 0.5
    assert "Against the baseline" in (b / "report.md").read_text()
    assert History(first.parent).get("b").status == "gates_failed"
    # the same code and model against run a: the mAP is the same (timing is left out: this host is shared)
    verdict = gate_run(History(first.parent), "b", "a", Tolerances(p99_rise_pct=1e9))
    assert verdict.baseline_id == "a" and not verdict.regressions
    assert verdict.checks[0].gate == "map50_95" and verdict.checks[0].change == pytest.approx(0, abs=1e-6)


@pytest.mark.slow
def test_a_git_ref_baseline_is_the_newest_run_made_from_that_commit(first):
    row = History(first.parent).get("a")
    if row.git_commit is None:
        pytest.skip(reason="these tests do not run from a git checkout: runs record no commit")
    verdict = gate_run(History(first.parent), "a", "HEAD", Tolerances(p99_rise_pct=1e9))
    assert verdict.baseline_id is None and "HEAD" in verdict.note  # nothing older than a at that commit
    with pytest.raises(ConfigError, match="neither a run"):
        gate_run(History(first.parent), "a", "no-such-ref-or-run")


def test_a_bad_baseline_is_refused_before_anything_runs(tmp_path, shapes_root):
    with pytest.raises(ConfigError, match="neither a run") as err:
        make_plan(_request(tmp_path, shapes_root, baseline="no-such-run"))
    assert "--baseline last" in err.value.hint
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _row(run_id: str, **kw) -> RunRow:
    return RunRow(run_id, run_id, "2026-12-07T10:00:00", "ok", **kw)


def test_a_p99_rise_fails_only_above_its_tolerance_and_the_measured_noise():
    base = _row("base", map50_95=0.6, p99_ms=10.0, p99_noise_ms=0.2)
    slower = _row("new", map50_95=0.6, p99_ms=12.0, p99_noise_ms=0.3)  # +20 %, 2 ms > 2 x 0.3
    noisy = _row("new", map50_95=0.6, p99_ms=12.0, p99_noise_ms=1.5)  # +20 %, but 2 ms < 2 x 1.5
    a_bit = _row("new", map50_95=0.597, p99_ms=10.5, p99_noise_ms=0.01)  # +5 %, -0.3 points
    assert [c.passed for c in compare(slower, base)] == [True, False]
    assert [c.passed for c in compare(noisy, base)] == [True, True]
    assert [c.passed for c in compare(a_bit, base)] == [True, True]
    assert compare(a_bit, base, Tolerances(map_drop_pt=0.2))[0].passed is False


def test_what_was_not_measured_is_not_compared():
    base = _row("base", map50_95=None, p99_ms=10.0)
    emulated = _row("new", map50_95=0.5, emulator="qemu-user cortex-a72", emulator_p99_ms=900.0)
    checks = compare(emulated, base)
    assert [c.passed for c in checks] == [None, None]
    assert "baseline has no mAP" in checks[0].note and "emulator time" in checks[1].note


def test_the_index_takes_concurrent_writers(tmp_path):
    """Two connections writing at once: SQLite's lock serialises them; nothing is lost."""
    root = tmp_path / "runs"
    root.mkdir()
    history = History(root)
    history.rebuild()
    a, b = sqlite3.connect(history.path, timeout=30), sqlite3.connect(history.path, timeout=30)
    a.execute("BEGIN IMMEDIATE")
    a.execute("INSERT INTO runs (run_id, folder, created, status, mtime_ns) VALUES ('x', 'x', '', 'ok', 0)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(history.path, timeout=0.1).execute("BEGIN IMMEDIATE")
    a.commit()
    b.execute("INSERT INTO runs (run_id, folder, created, status, mtime_ns) VALUES ('y', 'y', '', 'ok', 0)")
    b.commit()
    assert sorted(r.run_id for r in history.runs(sync=False)) == ["x", "y"]


@pytest.mark.slow
def test_the_cli_lists_gates_and_draws_the_dashboard_in_a_browser(first, capsys):
    from edgekit.cli import main

    runs = str(first.parent)
    assert main(["history", "--runs", runs, "--target", "local", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["run_id"] for r in listed} >= {"a"} and all(r["target"] == "local" for r in listed)
    assert main(["history", "--runs", runs, "--target", "no-such-target"]) == 0
    assert "match" in capsys.readouterr().out
    assert main(["history", "gate", "a", "--runs", runs, "--baseline", "last"]) == 0  # nothing older
    assert "no baseline" in capsys.readouterr().out
    assert main(["history", "dashboard", "--runs", runs]) == 0
    page = first.parent / "dashboard.html"
    assert page.is_file()
    if not CHROMIUM.exists():
        pytest.skip(reason="/usr/bin/chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page()
        tab.goto(page.as_uri())
        titles = tab.locator("svg circle title").all_text_contents()
        heading = tab.locator("h2").first.text_content()
        broken = tab.evaluate("Array.from(document.images).filter(i => !i.complete).length")
        browser.close()
    assert any(" a " in f" {t} " or "· a ·" in t for t in titles), titles[:5]
    assert heading and broken == 0
