from __future__ import annotations

import sys

import pytest

from edgekit.core.errors import DeviceError, RemoteCommandError
from edgekit.core.files import sha256_file
from edgekit.device.transport import CommandResult, LocalTransport, Transport

PY = sys.executable


@pytest.fixture
def transport(tmp_path):
    with LocalTransport(root=tmp_path) as t:
        yield t


def test_local_transport_satisfies_the_protocol(transport):
    assert isinstance(transport, Transport)


def test_run_returns_stdout_stderr_exit_and_duration(transport):
    res = transport.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert (res.exit_code, res.stdout, res.stderr, res.ok) == (0, "out\n", "err\n", True)
    assert res.argv[0] == PY and res.duration > 0


def test_arguments_are_never_split_or_interpreted_by_a_shell(transport):
    tricky = "a b; echo $HOME 'q' \"d\" `x`"
    res = transport.run([PY, "-c", "import sys; print(sys.argv[1])", tricky])
    assert res.stdout.rstrip("\n") == tricky


def test_stderr_lines_stream_to_the_callback_while_running(transport):
    seen: list[str] = []
    script = (
        "import sys, time\nfor i in range(3):\n    print(f'@progress x {i} 3', file=sys.stderr, flush=True)"
    )
    transport.run([PY, "-c", script], on_stderr_line=seen.append)
    assert seen == ["@progress x 0 3", "@progress x 1 3", "@progress x 2 3"]


def test_nonzero_exit_raises_with_the_stderr_tail(transport):
    script = "import sys\nsys.stderr.write('first\\nmodel.onnx is bad\\n')\nsys.exit(3)"
    with pytest.raises(RemoteCommandError) as info:
        transport.run([PY, "-c", script])
    err = info.value
    assert err.result.exit_code == 3 and not err.result.ok
    assert "exited 3" in err.message and "model.onnx is bad" in err.message
    assert err.hint


def test_nonzero_exit_without_check_returns_the_result(transport):
    res = transport.run([PY, "-c", "import sys; sys.exit(4)"], check=False)
    assert res.exit_code == 4 and not res.ok


def test_timeout_kills_the_command_and_says_so(transport):
    script = "import sys, time; print('started', file=sys.stderr, flush=True); time.sleep(30)"
    with pytest.raises(DeviceError) as info:
        transport.run([PY, "-c", script], timeout=0.5)
    assert "timed out after 0.5 s" in info.value.message and "started" in info.value.message
    assert "timeout" in info.value.hint


def test_missing_program_is_a_device_error(transport):
    with pytest.raises(DeviceError, match="cannot run 'edgekit-no-such-program'"):
        transport.run(["edgekit-no-such-program"])


def test_put_get_roundtrip_with_checksums(transport, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    work = transport.mkdtemp()
    remote = f"{work}/sub/dir/file.bin"
    transport.put(src, remote)
    assert transport.sha256(remote) == sha256_file(src)
    back = tmp_path / "back.bin"
    transport.get(remote, back)
    assert back.read_bytes() == src.read_bytes()
    transport.remove(work)
    assert not (tmp_path / work).exists()
    with pytest.raises(DeviceError, match="does not exist"):
        transport.get(remote, back)


def test_result_tail_skips_progress_lines():
    res = CommandResult(["x"], 1, "", "a\n@progress timed 1 2\nb\nc\n", 0.1)
    assert res.tail(2) == "b\nc"
    assert CommandResult(["x"], 1, "only stdout\n", "", 0.1).tail() == "only stdout"
