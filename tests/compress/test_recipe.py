"""Recipe schema and ordering rules: refused before running, errors name the file and the key."""

from __future__ import annotations

import pytest

from edgekit.compress.recipe import SlimSpec, available_recipes, load_recipe
from edgekit.compress.swap import SwapStep
from edgekit.core.errors import ConfigError

REQUIRED = {"none", "default", "slim", "progressive", "l1", "fpgm", "microyolo", "distill", "qat"}


def test_every_shipped_recipe_loads():
    assert REQUIRED <= set(available_recipes())
    default = load_recipe("default")
    assert [s.type for s in default.torch_steps()] == ["prune"] and 0.2 <= default.steps[0].ratio <= 0.3
    assert default.quantize_step().method == "default" and default.quantize_step().keep_float == "auto"
    assert load_recipe("qat").quantize_step().type == "qat"
    assert load_recipe("none").quantize_step() is None


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_prune_after_ptq_is_refused_naming_both_steps(tmp_path):
    path = _write(tmp_path, "name: bad\nsteps:\n  - type: ptq\n  - type: prune\n    ratio: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert str(path) in msg and "'prune'" in msg and "'ptq'" in msg and "after quantization" in msg


def test_swap_after_pruning_is_refused(tmp_path):
    path = _write(tmp_path, "name: bad\nsteps:\n  - {type: prune, ratio: 0.3}\n  - {type: swap}\n")
    with pytest.raises(ConfigError, match=r"'swap' cannot follow step 0 'prune'"):
        load_recipe(path)


def test_unknown_key_names_file_and_key_path(tmp_path):
    path = _write(tmp_path, "name: bad\nsteps:\n  - type: prune\n    ratio: 0.3\n    finetune: {epoch: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: steps.0.finetune.epoch: unknown key")


def test_ratio_and_macs_target_are_exclusive(tmp_path):
    path = _write(tmp_path, "name: bad\nsteps:\n  - {type: prune, ratio: 0.3, macs_target: 0.5}\n")
    with pytest.raises(ConfigError, match="exactly one of 'ratio' or 'macs_target'"):
        load_recipe(path)


def test_missing_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_recipe("no-such-recipe")
    assert "default" in err.value.hint


def test_swap_width_scales_the_student_and_keeps_old_keys(tmp_path):
    from edgekit.compress.swap import microyolo_like
    from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

    plain = load_recipe(_write(tmp_path, "name: a\nsteps:\n  - {type: swap}\n")).steps[0]
    assert "width" not in plain.model_dump(mode="json")  # recipes written before the field keep their key
    wide = load_recipe(_write(tmp_path, "name: b\nsteps:\n  - {type: swap, width: 1.5}\n")).steps[0]
    assert wide.model_dump(mode="json")["width"] == 1.5 and "width x1.5" in SwapStep().label(wide)
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96, width=0.5))
    student = microyolo_like(teacher, wide.expansion, wide.se_reduction, wide.width)
    assert student.cfg.width == pytest.approx(0.75) and student.cfg.num_classes == 3
    n = sum(p.numel() for p in student.parameters())
    assert n > sum(p.numel() for p in microyolo_like(teacher, 1.0, 4).parameters())


def test_sparsity_distill_is_optional_and_left_out_of_the_dump_at_its_default():
    plain = SlimSpec(type="slim").model_dump(mode="json")
    assert "distill" not in plain["sparsity"]  # keys of recipes that do not set it stay put
    taught = SlimSpec(type="slim", sparsity={"distill": 1.0}).model_dump(mode="json")
    assert taught["sparsity"]["distill"] == 1.0


def test_sparsity_shrink_defaults_to_gamma_and_is_left_out_of_the_dump_there():
    plain = SlimSpec(type="slim").model_dump(mode="json")
    assert "shrink" not in plain["sparsity"] and SlimSpec(type="slim").sparsity.shrink == "gamma"
    whole = SlimSpec(type="slim", sparsity={"shrink": "channel"}).model_dump(mode="json")
    assert whole["sparsity"]["shrink"] == "channel"
    with pytest.raises(ValueError, match="shrink"):
        SlimSpec(type="slim", sparsity={"shrink": "beta"})


def test_swap_dsconv_defaults_to_first_and_is_left_out_of_the_dump_there():
    from edgekit.compress.recipe import SwapSpec
    from edgekit.compress.swap import microyolo_like
    from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig

    plain = SwapSpec(type="swap").model_dump(mode="json")
    assert "dsconv" not in plain and SwapSpec(type="swap").dsconv == "first"
    heavy = SwapSpec(type="swap", dsconv="heaviest")
    assert heavy.model_dump(mode="json")["dsconv"] == "heaviest"
    teacher = TinyYolo(TinyYoloConfig(num_classes=3, input_size=96))
    assert microyolo_like(teacher, 1.0, 4, 1.0, heavy.dsconv).cfg.dsconv == "heaviest"
    with pytest.raises(ValueError, match="dsconv"):
        SwapSpec(type="swap", dsconv="last")
