"""A simulated board: sshd in its own network namespace with its own address, and a link that can drop."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from edgekit.core.errors import HostUnreachableError
from tests.device.sshbed import SKIP_NO_NETNS, SKIP_NO_SSHD, SshServer, netns_available, sshd_available

pytest.importorskip("paramiko", reason="paramiko not installed (pip install 'edgekit[ssh]')")
pytestmark = [
    pytest.mark.skipif(not sshd_available(), reason=SKIP_NO_SSHD),
    pytest.mark.skipif(not netns_available(), reason=SKIP_NO_NETNS),
]

PY = sys.executable
TICKER = "import sys, time\nwhile True:\n    print('.', file=sys.stderr, flush=True); time.sleep(0.2)"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("board"), netns=True)
    srv.start()
    yield srv
    srv.link(True)
    srv.close()


def _gone(board: SshServer, marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not board.processes(marker):
            return True
        time.sleep(0.2)
    return False


def test_the_board_has_its_own_address(board):
    with board.transport() as t:
        addrs = t.run(["ip", "-br", "addr"]).stdout
    assert board.host in addrs and "127.0.0.1" in addrs and board.host != "127.0.0.1"


def test_dropped_link_is_detected_within_the_dead_link_time_and_nothing_is_left(board):
    marker = f"eklink{time.monotonic_ns()}"
    with board.transport(dead_after_s=4.0) as t:
        assert t.run(["true"]).ok
        threading.Timer(1.0, board.link, args=(False,)).start()
        start = time.monotonic()
        with pytest.raises(HostUnreachableError, match="link|closed"):
            t.run([PY, "-c", TICKER, marker])
        detected = time.monotonic() - start - 1.0
    board.link(True)
    assert detected < 10.0, f"dead link noticed after {detected:.1f} s"
    # Once the link is back the board's sshd sees the reset and the runner's stderr breaks: it exits.
    assert _gone(board, marker, 15.0)
    with board.transport() as t:  # and a retry works
        assert t.run(["echo", "back"]).stdout == "back\n"


def test_connecting_while_the_link_is_down_is_unreachable_after_retries(board):
    board.link(False)
    try:
        with board.transport(connect_timeout=1.0, retries=2) as t:
            start = time.monotonic()
            with pytest.raises(HostUnreachableError, match="after 2 attempt"):
                t.run(["true"])
            assert time.monotonic() - start < 8
    finally:
        board.link(True)
