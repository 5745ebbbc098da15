"""The weight range both ways: every quantization test runs with 7-bit and with 8-bit weights.

7-bit weights (``reduce_range``) cannot saturate on any CPU, so those cases run everywhere. 8-bit
weights saturate ONNX Runtime's u8s8 kernels on x86 without VNNI; a test whose assertion measures
output error at 8 bits uses :func:`skip_if_saturating`, which skips with that reason on such a host.
"""

from __future__ import annotations

import pytest

from edgekit.quantize.form import host_qdq_form

HOST_FORM = host_qdq_form()


SATURATES = (
    f"8-bit weights saturate ONNX Runtime's u8s8 kernels on this CPU ({HOST_FORM.int8_dot}, no VNNI): "
    "the error would measure the overflow; the 7-bit case covers this host"
)


def skip_if_saturating(reduce_range: bool) -> None:
    """Skip an error-measuring test at 8 bits on a CPU whose INT8 kernels saturate there."""
    if not reduce_range and HOST_FORM.reduce_range:
        pytest.skip(reason=SATURATES)


@pytest.fixture(params=[True, False], ids=["w7", "w8"], scope="module")
def reduce_range(request: pytest.FixtureRequest) -> bool:
    return request.param
