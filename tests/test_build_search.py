"""``edgekit build``'s calibration search: default takes the first method that passes, auto the best,
and auto goes on to the fallbacks when every method loses more than --max-drop."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.backends.contract.int8_plan import FLOAT_FALLBACK, Int8Plan
from edgekit.core.errors import BuildError
from edgekit.stages.search import MethodSearch


def _plan(methods: list[str], pick_best: bool) -> Int8Plan:
    """A QDQ backend's ``edgekit build`` plan: ``auto`` (the best) or ``default`` (the first to pass)."""
    search = "best" if pick_best else "first_passing"
    return Int8Plan("toy", "qdq", "auto", tuple(methods), search, "host", 5.0, "auto", FLOAT_FALLBACK)


def _search(tmp_path, kept_by_method: dict[str, float], fallback_kept: list[float], max_drop=5.0):
    be = SimpleNamespace(name="toy", int8_source="qdq", fallback=())
    search = MethodSearch(
        be, None, tmp_path / "m.onnx", SimpleNamespace(name="s", count=16), tmp_path, 1, max_drop
    )
    calls: list[str] = []

    def build(method, folder, extra_float=None, options=None):
        calls.append(f"{method}+{len(extra_float or [])}")
        kept = (
            kept_by_method[method] if not extra_float else fallback_kept[len(calls) - len(kept_by_method) - 1]
        )
        return SimpleNamespace(meta={"parity": {"detections": {"kept": kept, "score_error": 0.01}}})

    search._build = build
    search._ranking = lambda *a: [(f"conv{i}", 1.0) for i in range(8)]
    search._land = lambda folder, out: folder
    return search, calls


def test_auto_goes_on_to_the_float_fallback_when_every_method_loses_too_much(tmp_path):
    search, calls = _search(tmp_path, {"minmax": 0.923, "entropy": 0.85}, [0.923, 1.0])
    folder = search.run(_plan(["minmax", "entropy"], True), tmp_path / "out")
    assert calls == ["minmax+0", "entropy+0", "minmax+1", "minmax+2"]
    assert Path(folder).name == "candidate-minmax-float2"
    assert search.tried[-1]["float_layers"] == ["conv0", "conv1"]


def test_auto_refuses_when_nothing_is_within_max_drop_and_says_which_option(tmp_path):
    search, _ = _search(tmp_path, {"minmax": 0.9}, [0.9, 0.9, 0.9, 0.9])
    with pytest.raises(BuildError, match="more than --max-drop 5 points") as info:
        search.run(_plan(["minmax"], True), tmp_path / "out")
    assert "--max-drop" in info.value.hint


def test_default_keeps_the_first_method_that_builds(tmp_path):
    search, calls = _search(tmp_path, {"minmax": 0.96, "entropy": 1.0}, [])
    folder = search.run(_plan(["minmax", "entropy"], False), tmp_path / "out")
    assert calls == ["minmax+0"] and Path(folder).name == "candidate-minmax"


def test_a_deploys_failed_search_names_only_options_deploy_takes(tmp_path):
    from edgekit.cli import build_parser
    from edgekit.stages.quantize import FLOAT_ROUTE

    be = SimpleNamespace(name="toy", int8_source="qdq", fallback=())
    search = MethodSearch(
        be, None, tmp_path / "m.onnx", SimpleNamespace(name="s", count=16), tmp_path, 1, 0.0,
        float_route=FLOAT_ROUTE,
    )  # fmt: skip

    def refuse(method, folder, extra_float=None, options=None):
        raise BuildError(f"{method} loses the detections", "")

    search._build = refuse
    search._ranking = lambda *a: [(f"conv{i}", 1.0) for i in range(8)]
    with pytest.raises(BuildError) as info:
        search.choose(_plan(["minmax", "entropy"], False))
    deploy = build_parser()._subparsers._group_actions[0].choices["deploy"]
    options = {o for a in deploy._actions for o in a.option_strings}
    named = {w.strip("(),") for w in info.value.hint.split() if w.startswith("--")}
    assert named and named <= options, named - options
