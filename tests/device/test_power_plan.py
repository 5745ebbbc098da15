"""The sampler a target asks for, the host-side meter, and what a plan checks before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from edgekit.core.config import PowerSpec, load_target
from edgekit.core.errors import ConfigError
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.power import (
    SAMPLERS,
    DeviceSampler,
    MeterSampler,
    NullSampler,
    sampler_for,
)
from edgekit.device.transport import LocalTransport
from edgekit.stages.bench import check_target_ready
from tests.device.test_agent import BENCH, artifact_dir  # noqa: F401 - module fixture reused


def test_every_sensor_a_target_may_name_has_a_sampler():
    assert set(SAMPLERS) == set(PowerSpec.model_fields["sensor"].annotation.__args__)
    assert isinstance(sampler_for(PowerSpec(sensor="none")), NullSampler)
    assert isinstance(sampler_for(PowerSpec(sensor="tegrastats")), DeviceSampler)
    with pytest.raises(ConfigError, match="meter_command"):
        sampler_for(PowerSpec(sensor="meter"))


def test_an_unknown_sensor_is_refused_when_the_target_is_read(tmp_path):
    spec = yaml.safe_load(open(load_target("local").source))
    spec["power"] = {"sensor": "multimeter"}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="power.sensor"):
        load_target(str(path))


def test_meter_samples_are_moved_onto_the_devices_clock_with_the_offset_recorded(artifact_dir, tmp_path):  # noqa: F811
    script = "import time\nwhile True:\n    print(f'reading {4.5:.3f}', flush=True); time.sleep(0.02)"
    meter = MeterSampler([sys.executable, "-c", script], scope="USB-C meter at the board's input")
    x = np.zeros((1, 3, 16, 16), np.float32)
    res = Agent(LocalTransport(root=tmp_path), sampler=meter).bench(
        artifact_dir, BenchPlan(bench_input=x, idle_s=0.3, **BENCH), progress=False
    )
    assert res.power_w == pytest.approx(4.5) and res.idle_w == pytest.approx(4.5)
    assert res.energy_dynamic_mj == pytest.approx(0.0, abs=1e-9)
    assert abs(res.power_facts["clock_offset_s"]) < 0.5  # same machine: the clocks agree
    assert res.power_note == "meter: USB-C meter at the board's input"


def test_a_device_sampler_that_dies_is_not_measured_with_its_reason(artifact_dir, tmp_path):  # noqa: F811
    x = np.zeros((1, 3, 16, 16), np.float32)
    sampler = DeviceSampler("ina3221", 20)  # this host has no INA3221 rails
    res = Agent(LocalTransport(root=tmp_path), sampler=sampler).bench(
        artifact_dir, BenchPlan(bench_input=x, idle_s=0.2, **BENCH), progress=False
    )
    assert res.power_w is None and res.energy_mj is None
    assert res.power_note.startswith("not measured") and "INA3221" in res.power_note.upper()


def test_ssh_target_with_a_missing_key_is_refused_before_any_work(tmp_path):
    spec = yaml.safe_load(open(load_target("rk3588").source))
    spec["connection"]["key_file"] = str(tmp_path / "no_key")
    path = tmp_path / "rk.yaml"
    path.write_text(yaml.safe_dump(spec))
    pytest.importorskip("paramiko")
    with pytest.raises(ConfigError, match="key file"):
        check_target_ready(load_target(str(path)), None)
    check_target_ready(load_target(str(path)), "local")  # --device local needs no key


def test_edgekit_bench_cli_writes_a_run_folder_and_refuses_a_foreign_artifact(artifact_dir, tmp_path):  # noqa: F811
    cmd = [sys.executable, "-m", "edgekit", "bench", "--target", "local", "--artifact", str(artifact_dir)]
    res = subprocess.run([*cmd, "--iterations", "20", "--out", str(tmp_path), "--run-id", "b", "--json"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["run_dir"] == str(tmp_path / "b") and summary["power_w"] is None
    for name in ("record.json", "summary.json", "report.md", "report.html"):
        assert (tmp_path / "b" / name).is_file()
    foreign = [*cmd, "--target", "rpi4", "--device", "local", "--out", str(tmp_path), "--run-id", "c"]
    res = subprocess.run(foreign, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "built for backend onnxruntime" in res.stderr and "ncnn" in res.stderr
    assert not (tmp_path / "c").exists()
