"""MNN run on the board a build's checks run on (:mod:`edgekit.backends.contract.board_check`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.backends.contract.board_check import current, run_on_board
from edgekit.core.errors import BuildError, RemoteCommandError

SCRIPT = Path(__file__).with_name("mnn_check_run.py")


def run_on_check_board(
    model: Path, xs: list[np.ndarray], *, repeat: int = 1, precision: str = "high"
) -> list[list[list[np.ndarray]]]:
    """Each input through ``model`` on the check board, ``repeat`` times: ``[input][repeat][output]``."""
    board = current()
    if board is None:
        raise RuntimeError("run_on_check_board called outside checks_on(board)")
    stacked = np.concatenate([np.asarray(x, np.float32) for x in xs], 0)
    args = ["--model", model.name, "--repeat", str(repeat), "--precision", precision]
    try:
        got = run_on_board(board, SCRIPT, [model], stacked, args)
    except RemoteCommandError as exc:  # MNN itself failed on this model there: this candidate is refused
        raise BuildError(
            f"MNN failed on {board.name} running {model.name} (exit {exc.result.exit_code}): "
            f"{exc.result.tail(2)}",
            "try another calibration method (--calibrator), or build fp16",
        ) from exc
    outputs = 1 + max(int(k.rsplit("_", 1)[1]) for k in got)
    return [[[got[f"o{i}_{r}_{k}"] for k in range(outputs)] for r in range(repeat)] for i in range(len(xs))]
