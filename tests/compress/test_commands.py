"""``edgekit compress``: a bad recipe is refused before any model is loaded; a run writes model + record."""

from __future__ import annotations

import argparse

import pytest
import torch

from edgekit.cli.compress import add_parser
from edgekit.core.errors import ConfigError, ModelError
from edgekit.report.record import RunRecord


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_bad_recipe_is_refused_before_the_model_is_read(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {type: ptq}\n  - {type: prune, ratio: 0.3}\n")
    args = _parse(
        ["compress", "--model", str(tmp_path / "missing.pt"), "--recipe", str(bad), "--out", str(tmp_path)]
    )
    with pytest.raises(ConfigError, match="after quantization"):
        args.func(args)


def test_compress_writes_model_and_record(trained, shapes_root, tmp_path):
    model_path = tmp_path / "in.pt"
    torch.save(trained.model, model_path)
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("name: ft\nsteps:\n  - {type: finetune, epochs: 0.02}\n")
    out = tmp_path / "out"
    argv = [
        "compress",
        "--model",
        str(model_path),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
        "--data",
        str(shapes_root),
        "--quiet",
    ]
    args = _parse(argv)
    assert args.func(args) == 0
    record = RunRecord.load(out / "record.json")
    assert [n.stage for n in record.nodes] == ["compress:finetune"]
    assert isinstance(torch.load(out / "model.pt", weights_only=False), torch.nn.Module)


def test_unknown_model_file_is_a_model_error(tmp_path, shapes_root):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    args = _parse(
        [
            "compress",
            "--model",
            str(junk),
            "--recipe",
            "none",
            "--out",
            str(tmp_path / "o"),
            "--data",
            str(shapes_root),
            "--quiet",
        ]
    )
    with pytest.raises(ModelError, match="not a model saved by edgekit"):
        args.func(args)
