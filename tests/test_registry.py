from __future__ import annotations

import pytest

from edgekit.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.core.errors import ConfigError, EdgekitError, MissingExtraError
from edgekit.core.registry import BACKENDS, MISSING_EXTRA, NOT_BUILT, READY, Registry, get_backend


def test_tensorrt_is_a_device_build_backend():
    backend = get_backend("tensorrt")
    assert (backend.build_location, backend.int8_source, backend.runner) == ("device", "qdq", "trt_run.py")
    assert backend.qdq_form(None).layout == "tensorrt"


def test_known_backend_resolves_lazily():
    assert BACKENDS.get("onnxruntime") is OnnxRuntimeBackend
    backend = get_backend("onnxruntime")
    assert (backend.name, backend.runner, backend.build_location) == ("onnxruntime", "ort_run.py", "host")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        BACKENDS.get("tensorflow")
    assert "unknown backend 'tensorflow'" in info.value.message
    for name in ("mnn", "ncnn", "onnxruntime", "tensorrt", "tflm"):
        assert name in info.value.message and name in info.value.hint


def test_unbuilt_backend_says_not_built_yet():
    reg = Registry(
        "backend", {"soon": "edgekit_not_a_module_xyz:Backend"}, hint="use --target local (onnxruntime)"
    )
    with pytest.raises(EdgekitError) as info:
        reg.get("soon")
    assert type(info.value) is EdgekitError
    assert info.value.message == "backend 'soon' is not built yet in this version of edgekit"
    assert "local" in info.value.hint and "onnxruntime" in info.value.hint


def test_available_reports_status_and_extra():
    rows = {name: (status, extra) for name, status, extra in BACKENDS.available()}
    assert rows["onnxruntime"] == (READY, None)
    assert rows["mnn"] == (READY, "mnn") and rows["ncnn"] == (READY, "ncnn")
    assert rows["tflm"] == (READY, "tflite")
    assert rows["tensorrt"] == (READY, None)  # staged on the host; TensorRT itself lives on the Jetson
    assert set(rows) == set(BACKENDS.names())


def test_available_probes_runtimes_without_importing():
    table = {"gone": "edgekit_missing_module_probe:X", "norun": "json:JSONDecoder"}
    reg = Registry("backend", table, extras={"norun": "x"}, runtimes={"norun": "edgekit_not_installed_xyz"})
    assert reg.available() == [("gone", NOT_BUILT, None), ("norun", MISSING_EXTRA, "x")]


def test_import_error_of_a_dependency_becomes_missing_extra(tmp_path, monkeypatch):
    plugin = tmp_path / "edgekit_probe_plugin.py"
    plugin.write_text("import edgekit_not_installed_runtime_xyz\nclass Backend: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("backend", {"probe": "edgekit_probe_plugin:Backend"}, extras={"probe": "probe"})
    with pytest.raises(MissingExtraError) as info:
        reg.get("probe")
    assert "edgekit_not_installed_runtime_xyz" in info.value.message
    assert info.value.hint == "pip install 'edgekit[probe]'"
