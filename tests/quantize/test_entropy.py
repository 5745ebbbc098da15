"""The vectorized entropy threshold picks exactly ORT's, on histograms as ORT's collector builds them."""

import numpy as np
import pytest

from edgekit.quantize.entropy import entropy_threshold


@pytest.mark.parametrize(("num_bins", "num_quantized_bins"), [(1024, 256), (300, 64), (129, 128)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_threshold_is_ort_s_own(num_bins, num_quantized_bins, seed, capsys):
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(seed)
    collector = HistogramCollector("entropy", False, num_bins, num_quantized_bins, 99.99, "same")
    for scale in (1.0, 3.0):  # two batches: the second widens the range and merges the histograms
        body = rng.standard_normal(4000) * scale * (seed + 1)
        tail = rng.exponential(3.0, 300) * seed  # a one-sided tail (none for seed 0)
        collector.collect({"t": [np.concatenate([body, tail]).astype(np.float32)]})
    histogram = collector.histogram_dict["t"]
    if seed == 2:  # empty bins inside the window: the expansion's divisions by the non-zero count
        counts = np.where(rng.random(histogram[0].size) < 0.3, 0, histogram[0])
        histogram = (counts, *histogram[1:])
    ours, theirs = (
        entropy_threshold(histogram, num_quantized_bins),
        collector.get_entropy_threshold(histogram, num_quantized_bins),
    )
    assert ours == theirs and ours[0].dtype == theirs[0].dtype
    capsys.readouterr()  # ORT prints as it collects
