"""Split output maps: channels grouped by range, the converter's report read back, the runner reassembling."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.backends.tflm.converters.output_groups import channel_groups
from edgekit.backends.tflm.io import bundle_notes, io_spec
from edgekit.backends.tflm.tflm_run import assemble, tflite_outputs
from edgekit.core.errors import BuildError

# per-channel max |logit| of the 128 px reference's stride-8 map on the calibration set (rounded):
# box offsets x, y; box sizes w, h; objectness; six classes
STRIDE8 = [3.8, 4.6, 1.0, 0.9, 14.7, 9.6, 10.7, 10.1, 9.3, 10.2, 14.6]


def test_yolo_channels_fall_into_sizes_offsets_and_scores():
    assert channel_groups(STRIDE8) == [[0, 1], [2, 3], [4, 5, 6, 7, 8, 9, 10]]


def test_similar_ranges_stay_one_group_and_groups_are_capped():
    assert channel_groups([1.0, 1.5, 1.9, 1.2]) == [[0, 1, 2, 3]]
    assert channel_groups([0.0, 5.0]) == [[0], [1]]  # a dead channel is its own group
    many = [1.0, 4.0, 16.0, 64.0, 256.0]
    assert len(channel_groups(many)) == 3
    assert sorted(c for g in channel_groups(many) for c in g) == list(range(5))


def _out(n: int, shape: list[int], scale: float, zero: int) -> dict:
    return {"name": f"serving_default_output_{n}_output", "shape": shape, "dtype": "int8", "scale": scale,
            "zero_point": zero}  # fmt: skip


def _report() -> dict:
    # litert lists outputs in its own order; their names carry the program's output number
    return {
        "inputs": [
            {"name": "x", "shape": [1, 64, 64, 3], "dtype": "int8", "scale": 1 / 255, "zero_point": -128}
        ],
        "outputs": [
            _out(2, [1, 4, 4, 11], 0.1, 5),
            _out(0, [1, 8, 8, 4], 0.03, 0),
            _out(1, [1, 8, 8, 7], 0.08, -10),
        ],
        "output_groups": [[[0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], None],
    }


DECODE = {"maps": [{"stride": 8, "channels": 11, "prior": 16}, {"stride": 16, "channels": 11, "prior": 48}]}


def test_io_spec_reads_a_split_map_as_one_map_with_its_parts():
    io = io_spec(_report(), DECODE, "NHWC")
    s8, s16 = io["outputs"]
    assert s8["stride"] == 8 and s8["shape"] == [1, 8, 8, 11] and s8["scale"] is None
    assert [(p["index"], p["channels"], p["scale"]) for p in s8["parts"]] == [
        (1, [0, 1, 2, 3], 0.03),
        (2, [4, 5, 6, 7, 8, 9, 10], 0.08),
    ]
    assert s16["stride"] == 16 and s16["index"] == 0 and "parts" not in s16
    assert [o["index"] for o in tflite_outputs(io)] == [0, 1, 2]  # the order a firmware sends them in
    arena = {"note": "n", "recorded_bytes": 1, "bisected_bytes": 1}
    budget = {"flash_bytes": 1, "ram_bytes": 1, "note": "n"}
    notes = " ".join(bundle_notes(arena, budget, {**DECODE, "kind": "yolov5"}, io))
    assert "output 1 = channels 0,1,2,3, output 2 = channels 4,5,6,7,8,9,10" in notes


def test_groups_that_do_not_cover_the_outputs_are_a_build_error():
    report = {**_report(), "output_groups": [[[0, 1], [2, 3], [4, 5]], None]}
    with pytest.raises(BuildError, match="do not cover"):
        io_spec(report, DECODE, "NHWC")


def test_the_runner_puts_each_groups_channels_back_in_place():
    io = io_spec(_report(), DECODE, "NHWC")
    rng = np.random.default_rng(0)
    want8 = rng.uniform(-3, 3, size=(1, 8, 8, 11)).astype(np.float32)  # within every part's int8 range
    want16 = rng.uniform(-3, 3, size=(1, 4, 4, 11)).astype(np.float32)

    def q(x, spec):
        return np.clip(np.round(x / spec["scale"]) + spec["zero_point"], -128, 127).astype(np.int8)

    s8, s16 = io["outputs"]
    raws = {p["index"]: q(want8[..., p["channels"]], p) for p in s8["parts"]} | {0: q(want16, s16)}
    got8, got16 = assemble(io, raws.__getitem__)
    for part in s8["parts"]:  # each group within half its own step
        err = np.abs(got8[..., part["channels"]] - want8[..., part["channels"]])
        assert err.max() <= part["scale"] / 2 + 1e-6
    assert got16.shape == want16.shape and np.abs(got16 - want16).max() <= 0.05 + 1e-6
