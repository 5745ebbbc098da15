"""`edgekit report RUN... --compare`: one table across runs and the accuracy-against-latency front."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.core.errors import DataError
from edgekit.report.compare import dominated, load_points, render_compare
from tests.report.conftest import build_record


def _run(tmp_path: Path, run_id: str, backend: str, map50_95: float, p50: float) -> Path:
    rec = build_record(run_id)
    rec.target = {**rec.target, "backend": backend, "name": f"t-{backend}"}
    rec.node("eval").metrics["map50_95"] = map50_95
    rec.node("bench").metrics["latency_ms"] = {**rec.node("bench").metrics["latency_ms"], "p50": p50}
    folder = tmp_path / run_id
    folder.mkdir()
    rec.save(folder / "record.json")
    return folder


@pytest.fixture
def runs(tmp_path):
    return [
        _run(tmp_path, "ort", "onnxruntime", 0.50, 1.0),
        _run(tmp_path, "mnn", "mnn", 0.45, 2.0),  # less accurate and slower than ort: dominated
        _run(tmp_path, "ncnn", "ncnn", 0.55, 3.0),  # the most accurate: on the front
    ]


def test_front_marks_exactly_the_dominated_runs(runs):
    points = load_points(runs)
    assert dominated(points) == [False, True, False]


def test_compare_writes_a_table_and_the_front_plot(runs, tmp_path):
    written = render_compare(runs, tmp_path / "cmp")
    names = [p.name for p in written]
    assert names == ["compare.md", "compare.html", "pareto.png"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "dominated" in rows["mnn"] and "on the front" in rows["ort"] and "on the front" in rows["ncnn"]
    assert "0.450" in rows["mnn"] and "not measured" in rows["mnn"]  # no energy sensor: never 0
    assert (tmp_path / "cmp" / "report_files" / "pareto.png").stat().st_size > 1000


def test_cli_compare_and_its_errors(runs, tmp_path, capsys):
    assert main(["report", *map(str, runs), "--compare", "--out", str(tmp_path / "c2")]) == 0
    assert (tmp_path / "c2" / "compare.html").is_file()
    assert main(["report", *map(str, runs[:2])]) != 0  # several runs need --compare
    assert "--compare" in capsys.readouterr().err
    with pytest.raises(DataError, match="at least two"):
        render_compare(runs[:1], tmp_path / "c3")
    assert not (tmp_path / "c3").exists()


def test_runs_of_different_metrics_are_not_put_on_one_front(runs, tmp_path):
    """A user's model without labels measures teacher agreement: not comparable with mAP runs."""
    from edgekit.report.record import RunRecord

    record = RunRecord.load(runs[0] / "record.json")
    record.node("data").config["metric"] = "teacher_agreement"
    record.save(runs[0] / "record.json")
    with pytest.raises(DataError, match=r"measure different things.*ort \(teacher_agreement\)"):
        load_points(runs)
    for run in runs[1:]:
        record = RunRecord.load(run / "record.json")
        record.node("data").config["metric"] = "teacher_agreement"
        record.save(run / "record.json")
    md = render_compare(runs, tmp_path / "cmp", html=False)[0].read_text()
    assert "agreement 50-95 (device)" in md and "mAP" not in md
