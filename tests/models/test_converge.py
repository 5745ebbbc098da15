"""The converged reference: its plateau rule, resuming, and the checkpoint that ships with edgekit."""

from __future__ import annotations

import pytest

from edgekit.core.files import stable_hash
from edgekit.data.shapes import ShapesConfig, builtin_dataset
from edgekit.models.converge import ConvergeConfig, best_cycle, load_checkpoint, plateaued
from edgekit.models.tinyyolo import TinyYoloConfig
from edgekit.models.zoo import converged_key, converged_reference, dataset_key, shipped_dir


def _points(*values):
    return [{"cycle": i, "map50_95": v} for i, v in enumerate(values)]


def test_the_plateau_rule_waits_for_patience_cycles_without_min_gain():
    cfg = ConvergeConfig(min_gain=0.005, patience=2)
    assert not plateaued(_points(0.50, 0.52), cfg)  # too few cycles to judge
    assert not plateaued(_points(0.50, 0.52, 0.523, 0.530), cfg)  # the last cycle gained 1.0 point
    assert plateaued(_points(0.50, 0.52, 0.523, 0.521), cfg)  # two cycles < 0.5 points over 0.52
    assert best_cycle(_points(0.50, 0.52, 0.523, 0.521))["cycle"] == 2


def test_training_resumes_from_the_last_finished_cycle(tmp_path):
    root = builtin_dataset(
        tmp_path, ShapesConfig(image_size=64, splits={"train": 48, "val": 12, "calib": 8}), False
    )
    short = ConvergeConfig(cycle_epochs=0.5, max_cycles=2, min_gain=1.0, patience=5)
    first = converged_reference(root, 64, short, progress=False, cache=tmp_path, shipped=tmp_path / "none")
    assert not first.cached and [p["cycle"] for p in first.metrics["curve"]] == [0, 1]
    assert first.metrics["stopped"] == "max_cycles"
    # the same schedule again: loaded, not retrained
    again = converged_reference(root, 64, short, progress=False, cache=tmp_path, shipped=tmp_path / "none")
    assert again.cached and again.key == first.key
    # its checkpoint is plain tensors and values: loads with weights_only
    model, ckpt = load_checkpoint(first.path)
    assert ckpt["metrics"]["curve"] == first.metrics["curve"] and model.cfg.input_size == 64
    # an interrupted run (cycle files and curve kept) resumes after its last cycle
    work = tmp_path / "models" / f"converge-{first.key}"
    lines = (work / "curve.jsonl").read_text().splitlines()
    (work / "curve.jsonl").write_text(lines[0] + "\n")
    first.path.unlink()
    logs: list[str] = []
    resumed = converged_reference(
        root, 64, short, progress=False, cache=tmp_path, shipped=tmp_path / "none", log=logs.append
    )
    assert any("resuming after cycle 0" in line for line in logs)
    assert resumed.metrics["curve"][0] == first.metrics["curve"][0] and len(resumed.metrics["curve"]) == 2


def test_the_shipped_reference_is_the_one_a_default_deploy_loads():
    """The checkpoint in edgekit/models/weights matches the built-in data, architecture and schedule."""
    cfg = ShapesConfig(image_size=160)
    key = converged_key(
        None, TinyYoloConfig(num_classes=6, input_size=160), ConvergeConfig(), stable_hash(cfg.__dict__)
    )
    path = shipped_dir() / f"reference-{key}.pt"
    if not path.is_file():
        pytest.fail(f"no shipped reference {path.name}: run `make reference` and commit it")
    model, ckpt = load_checkpoint(path)
    record = ckpt["metrics"]
    assert record["stopped"] in ("plateau", "max_cycles") and record["curve"]
    assert record["map50_95"] == max(p["map50_95"] for p in record["curve"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_data_key_of_a_generated_set_is_its_generator_config(shapes_root):
    import yaml

    meta = yaml.safe_load((shapes_root / "data.yaml").read_text())
    assert dataset_key(shapes_root) == stable_hash(meta["generator"])
