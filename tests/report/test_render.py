import html
from pathlib import Path

import pytest
from PIL import Image

from edgekit.core.errors import DataError
from edgekit.report.plots import accuracy_vs_cost, gamma_histogram, latency_histogram
from edgekit.report.record import RunRecord
from edgekit.report.render import render_markdown, render_run

CHROMIUM = Path("/usr/bin/chromium")


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as img:
        return img.size


def test_render_run_writes_reports_and_plots(run_dir):
    written = render_run(run_dir)
    names = [p.relative_to(run_dir).as_posix() for p in written]
    assert names[:2] == ["report.md", "report.html"]
    assert set(names[2:]) == {
        "report_files/latency.png",
        "report_files/accuracy_vs_cost.png",
        "report_files/bn_gamma.png",
    }
    for png in written[2:]:
        width, height = _png_size(png)
        assert width > 300 and height > 200
    assert not [p for p in run_dir.rglob("*.tmp")]


def test_markdown_contains_the_numbers(run_dir, record, numbers):
    render_run(run_dir, html=False)
    assert not (run_dir / "report.html").exists()
    text = (run_dir / "report.md").read_text()
    stats = record.node("bench").metrics["latency_ms"]
    assert text.startswith("# edgekit report: local · onnxruntime · int8\n")
    assert "**Status:** ok" in text
    expected = [
        "| parameters | 1.23 M | 612.35 k | -50.4% |",
        "| MACs | 456.00 M | 230.10 M | -49.5% |",
        "| mAP@0.5 | 0.781 | 0.752 | -0.029 |",
        "| mAP@0.5:0.95 | 0.523 | 0.489 | -0.034 |",
        f"| latency p50 (ms) | not measured | {stats['p50']:.2f} |  |",
        f"| latency p99 (ms) | not measured | {stats['p99']:.2f} |  |",
        f"| FPS | not measured | {1000 / stats['mean']:.1f} |  |",
        "| power (W) | not measured | not measured |  |",
        "| energy per inference (mJ) | not measured | not measured |  |",
        "| size | 4.72 MiB | 668.00 KiB | -86.2% |",
        f"| sha256 | {numbers['calibration']['sha256']} |",
        "| percentile | 0.752 | 0.489 | 668.00 KiB | 1.30 | 3.60 | chosen |",
        "| calibrator | mAP50 | mAP50-95 | size | loss (pt) vs FP32 0.502 | latency p50 (ms) |  |",
        "| minmax-float1 | — | — | — | — | — | refused: scores cosine 0.93 < 0.95 |",
        "| backbone.0.conv | 0.0123 | fp32 |",
        "| max_map_drop | 0.05 | 0.0340 | pass |",
        "| onnxruntime | 1.32.0 |",
        "![Latency distribution](report_files/latency.png)",
    ]
    for line in expected:
        assert line in text, line
    # The fixture's latencies are lognormal with CV about 8 %: the report says they are noisy.
    assert f"**Warning:** latency is noisy: CV {100 * stats['cv']:.1f} % (> 5 %)" in text
    stage_lines = [line for line in text.splitlines() if line.startswith("| compress:l1 |")]
    assert len(stage_lines) == 1 and "| 0.764 | 0.502 | 120.5 | no | ok |" in stage_lines[0]


def test_failed_record_renders_error_and_hint(tmp_path, failed_record):
    failed_record.save(tmp_path / "record.json")
    written = render_run(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "**Status:** failed" in text
    assert "**Stopped at stage:** build" in text
    assert f"**Error:** {failed_record.error['message']}" in text
    assert f"**Hint:** {failed_record.error['hint']}" in text
    assert "| build | MNN artifact |" in text and "| failed |" in text
    assert "latency.png" not in text  # no bench ran: no latency plot, and nothing referencing one
    assert {p.name for p in written} == {"report.md", "report.html", "accuracy_vs_cost.png", "bn_gamma.png"}
    page = (tmp_path / "report.html").read_text()
    assert html.escape(failed_record.error["hint"]) in page and 'class="bad"' in page


def test_html_escapes_text(tmp_path, record):
    record.nodes[0].label = "<script>alert(1)</script> & co"
    record.save(tmp_path / "record.json")
    render_run(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_plots_are_none_without_data(tmp_path):
    bare = RunRecord.new("bare", [], {"name": "local"}, {})
    bare.child("export", {"opset": 17}, metrics={"params": 10})
    assert latency_histogram(bare, tmp_path) is None
    assert accuracy_vs_cost(bare, tmp_path) is None
    assert gamma_histogram(bare, tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert "## Plots" not in render_markdown(bare, tmp_path)


def test_render_run_without_a_record_names_the_file(tmp_path):
    with pytest.raises(DataError, match="record.json does not exist") as info:
        render_run(tmp_path)
    assert str(tmp_path / "record.json") in info.value.message


def test_report_html_loads_in_a_browser(run_dir, record):
    if not CHROMIUM.exists():
        pytest.skip(reason="/usr/bin/chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    render_run(run_dir)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            page.goto((run_dir / "report.html").as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({src: e.getAttribute('src'), ok: e.complete, w: e.naturalWidth}))",
            )
            title = page.title()
            headline = page.locator("h2:has-text('Reference against deployed') + table").inner_text()
        finally:
            browser.close()
    assert len(images) == 3
    for img in images:
        assert img["ok"] and img["w"] > 0, img
    assert title == "edgekit report: local · onnxruntime · int8"
    assert "mAP@0.5:0.95" in headline and "0.489" in headline and "not measured" in headline


def test_the_reference_training_curve_is_a_table(tmp_path, record):
    curve = [
        {"cycle": 0, "epochs": 10.0, "lr": 0.003, "map50": 0.864, "map50_95": 0.573, "wall_s": 379.0},
        {"cycle": 1, "epochs": 20.0, "lr": 0.0021, "map50": 0.906, "map50_95": 0.620, "wall_s": 380.0},
    ]
    record.node("train").extra.update({"curve": curve, "epochs": 20.0, "stopped": "plateau", "wall_s": 759.0})
    text = render_markdown(record, tmp_path)
    section = text[text.index("Reference training") :]
    assert "stopped on plateau after 20 epochs (12.7 min to train)" in section
    assert "| 20 | 0.00210 | 0.906 | 0.620 | 380 s | kept |" in section


def test_a_swap_initialised_from_the_teacher_shows_its_fit(tmp_path, record):
    init = {
        "copied": ["stem.0", "pred8"],
        "fitted": ["stem.2", "p8"],
        "steps": 124,
        "fit_loss_first_epoch": {"stem.2": 0.91, "p8": 1.2},
        "fit_loss": {"stem.2": 0.4, "p8": 0.655},
        "after_init": {"map50": 0.31, "map50_95": 0.12},
    }
    record.node("train").extra["init"] = init
    text = render_markdown(record, tmp_path)
    section = text[text.index("Swap initialised from the teacher") :]
    assert "stem.0, pred8 copied" in section and "(124 steps)" in section
    assert "mAP50 0.310, mAP50-95 0.120" in section
    assert "| p8 | 1.200 | 0.655 |" in section
    assert "Swap initialised" not in render_markdown(RunRecord.new("r2", [], {"name": "local"}, {}), tmp_path)
    record.node("train").extra["init"] = {**init, "widened": True, "student_fed_steps": 62}
    section = render_markdown(record, tmp_path)
    assert "copied (widened through Net2WiderNet channel maps)" in section
    assert "(124 steps, the last 62 on the student's own features)" in section


def test_slimming_shows_where_the_accuracy_goes(tmp_path, record):
    slim = record.node("compress:slim")
    slim.extra["sparsity"] = {"below": 0.1, "fraction_before": 0.0, "fraction_after": 0.354}
    slim.extra["stages"] = {
        "after_sparsity": {"map50": 0.701, "map50_95": 0.402},
        "after_prune": {"map50": 0.55, "map50_95": 0.301},
    }
    text = render_markdown(record, tmp_path)
    section = text[text.index("Slimming by stage (compress:slim)") :]
    assert "0.0 % before sparsity training, 35.4 % after" in section
    assert "| start | 0.781 | 0.523 |" in section  # the node before it: the FP32 reference
    assert "| after the cut (BN re-estimated) | 0.550 | 0.301 |" in section
    assert "| after the fine-tune | 0.772 | 0.511 |" in section
    assert "|gamma| below 0.10" in section and "exactly zero" not in section
    slim.extra["sparsity"].update(shrink="channel", dead_after=0.322)
    section = render_markdown(record, tmp_path)
    assert "||(gamma, beta)|| below 0.10" in section
    assert "32.2 % exactly zero (whole channels: removing them changes nothing)" in section
    assert "Slimming by stage" not in render_markdown(
        RunRecord.new("r2", [], {"name": "local"}, {}), tmp_path
    )


def test_an_int8_build_says_which_layers_stayed_float_and_why(tmp_path, record):
    build = record.node("build")
    build.extra.update(
        {
            "quantization": {"method": "ema", "float_layers": ["/pred8/Conv", "/pred16/Conv"]},
            "parity": {"detections": {"kept": 1.0, "score_error": 0.0143, "box_iou": 0.9766}},
        }
    )
    text = render_markdown(record, tmp_path)
    section = text[text.index("## INT8") : text.index("## Stages")]
    assert "| method | ema |" in section and "| FP32 detections kept (check images) | 1.000 |" in section
    assert "| box IoU with FP32 | 0.977 |" in section and "| layers kept in float | 2 |" in section
    assert "/pred8/Conv, /pred16/Conv. Why: the detector's prediction convolutions" in section


def test_a_float_build_has_no_int8_section(tmp_path, record):
    record.node("build").config["precision"] = "fp32"
    assert "## INT8" not in render_markdown(record, tmp_path)


def test_a_backend_states_its_own_reason_for_float_layers(tmp_path, record):
    record.node("build").extra["quantization"] = {
        "method": "minmax",
        "float_layers": ["/model.2/cv1/conv/Conv/WithoutBiases"],
        "float_why": "the layers NNCF's accuracy control put back to float",
    }
    text = render_markdown(record, tmp_path)
    assert "WithoutBiases. Why: the layers NNCF's accuracy control put back to float." in text


def test_the_runtimes_own_per_layer_times_are_reported(tmp_path, record):
    layers = [{"layer": "/stem/Conv", "type": "Convolution", "kernel": "brgconv_avx512_I8", "ms": 0.1673}]
    report = {"openvino": {"device": "CPU", "inference_precision": "f32", "layers": layers}}
    record.node("bench").extra["runtime_report"] = report
    text = render_markdown(record, tmp_path)
    section = text[text.index("## Slowest layers on the device (openvino)") :]
    assert "| /stem/Conv | Convolution | brgconv_avx512_I8 | 0.1673 |" in section
    assert "inference precision f32" in section
    del record.node("bench").extra["runtime_report"]
    assert "Slowest layers" not in render_markdown(record, tmp_path)
