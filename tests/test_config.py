import pytest

from edgekit.core.config import all_targets, load_target, parse_target
from edgekit.core.errors import ConfigError


def test_shipped_targets_load_and_alias_resolves():
    targets = all_targets()
    assert {"local", "jetson-xavier-nx", "rpi4-ncnn", "rk3588-mnn", "stm32h7-tflm"} <= set(targets)
    assert load_target("jetson").name == "jetson-xavier-nx"
    assert load_target("stm32h7-tflm").limits.flash_kb == 2048


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError) as exc:
        load_target("no-such-board")
    assert "unknown target 'no-such-board'" in exc.value.message and "local" in exc.value.hint


def _write(tmp_path, text):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


BASE = """name: t
description: d
board: b
backend: onnxruntime
precision: int8
connection: {type: local}
"""


def test_unknown_key_and_missing_field_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"t.yaml: unknown key 'runtime.thread'"):
        parse_target(_write(tmp_path, BASE + "runtime: {thread: 2}\n"))
    with pytest.raises(ConfigError, match=r"missing field 'board'"):
        parse_target(_write(tmp_path, BASE.replace("board: b\n", "")))
    with pytest.raises(ConfigError, match=r"missing field 'connection.host'"):
        parse_target(_write(tmp_path, BASE.replace("{type: local}", "{type: ssh, user: u}")))


def test_password_in_yaml_is_refused(tmp_path):
    text = BASE.replace("{type: local}", "{type: ssh, host: h, user: u, password: hunter2}")
    with pytest.raises(ConfigError, match="password") as exc:
        parse_target(_write(tmp_path, text))
    assert "key_file" in exc.value.hint
