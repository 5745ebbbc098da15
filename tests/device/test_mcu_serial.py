"""An MCU on a serial port: the serial runner against a pty pair whose far end plays the board.

The "board" is ``tests/device/fakeboard/mcu_board.py``: edgekit's serial protocol with the
``tflite-micro`` interpreter computing (the reference kernels the firmware runs); its cycle counts are a
test double's, used for plumbing only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.core.errors import DeviceError, RemoteCommandError
from edgekit.core.registry import get_backend
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.transport import LocalTransport
from tests.contract.backend_contract import INPUT_SIZE, NUM_CLASSES, make_calibration_set
from tests.contract.test_tflm import _missing, _model

BOARD = Path(__file__).resolve().parent / "fakeboard" / "mcu_board.py"
pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgekit.export.onnx import export_onnx, export_raw_program

    work = tmp_path_factory.mktemp("mcu")
    calib = make_calibration_set(work / "calibration")
    shape = [1, 3, INPUT_SIZE, INPUT_SIZE]
    fp32 = export_onnx(_model(), shape, work / "fp32.onnx")
    program = export_raw_program(_model(), shape, work / "raw.pt2")
    options = {"precision": "int8", "threads": 1, "head": "yolov5", "num_classes": NUM_CLASSES}
    return get_backend("tflm").build(fp32, options, work / "art", calib=calib, torch_program=program), calib


class Board:
    """A pty pair: the runner opens the slave path, the fake board serves the master end."""

    def __init__(self, art_dir: Path, answers: int = -1) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        argv = [sys.executable, str(BOARD), "--fd", str(self.master), "--artifact", str(art_dir)]
        self.proc = subprocess.Popen([*argv, "--answers", str(answers)], pass_fds=(self.master,))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def _bench(art, tmp_path, board: Board, evals):
    return Agent(LocalTransport(root=tmp_path)).bench(
        art.dir,
        BenchPlan(
            bench_input=evals[:1],
            eval_inputs=evals,
            warmup=2,
            min_warmup_s=0.0,
            iterations=10,
            min_seconds=0.0,
            conf=0.0,
            timeout=120,
            runner="mcu_serial_run.py",
            runner_args=tuple(["--port", board.path, "--timeout", "2"]),
        ),
        progress=False,
    )


def test_the_board_over_serial_gives_the_interpreters_outputs_and_its_own_cycles(artifact, tmp_path):
    art, calib = artifact
    from edgekit.backends.tflm.tflm_run import TflmRuntime
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.runners import detcore

    evals = np.concatenate(list(calib.arrays(spec=PreprocessSpec(input_size=INPUT_SIZE))))[-4:]
    board = Board(art.dir)
    try:
        res = _bench(art, tmp_path, board, evals)
    finally:
        board.close()
    local = TflmRuntime(art.meta, str(art.dir), None)
    for x, dets in zip(evals, res.detections, strict=True):
        np.testing.assert_array_equal(dets, detcore.candidates(local.infer(x[None]), "yolov5", conf=0.0))
    assert res.runtime == "tflm-serial" and len(res.raw["device_latency_ms"]) >= 12
    assert res.raw["board"]["core_hz"] == 480e6 and res.guard["output_sha256"]


def test_a_board_that_stops_answering_is_one_clear_error_and_nothing_is_left(artifact, tmp_path):
    art, calib = artifact
    from edgekit.data.preprocess import PreprocessSpec

    evals = np.concatenate(list(calib.arrays(spec=PreprocessSpec(input_size=INPUT_SIZE))))[-4:]
    board = Board(art.dir, answers=5)
    try:
        with pytest.raises((RemoteCommandError, DeviceError), match="stopped answering") as info:
            _bench(art, tmp_path, board, evals)
    finally:
        board.close()
    assert "no output header within 2 s" in str(info.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("edgekit-")]  # work folder removed


def test_a_board_running_another_model_is_refused(artifact, tmp_path):
    art, _ = artifact
    from edgekit.backends.tflm import mcu_serial_run as serial

    board = Board(art.dir)
    try:
        serial.SERIAL.update({"port": board.path, "timeout": 2})
        meta = {**art.meta, "sha256": {**art.meta["sha256"], art.meta["files"]["model"]: "0" * 64}}
        with pytest.raises(Exception, match="flash the artifact's firmware bundle"):
            serial.SerialBoard(meta, str(art.dir), None)
    finally:
        board.close()
