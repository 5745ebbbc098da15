"""SSHTransport against a real OpenSSH server on 127.0.0.1 (and faults a board really has)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgekit.core.errors import (
    ConfigError,
    DeviceError,
    HostKeyError,
    HostUnreachableError,
    RemoteCommandError,
)
from edgekit.core.files import sha256_file
from edgekit.device.transport import Transport
from tests.device.sshbed import SKIP_NO_SSHD, SshServer, sshd_available

pytest.importorskip("paramiko", reason="paramiko not installed (pip install 'edgekit[ssh]')")
pytestmark = pytest.mark.skipif(not sshd_available(), reason=SKIP_NO_SSHD)

PY = sys.executable
SKIP_NO_TMPFS = "mounting a small tmpfs needs root; a full remote disk cannot be simulated here"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("sshd"))
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def ssh(server):
    if server.proc is None:
        server.start()
    with server.transport() as t:
        yield t


def test_ssh_transport_satisfies_the_protocol(ssh):
    assert isinstance(ssh, Transport)
    assert ssh.name == f"ssh://{ssh.user}@[127.0.0.1]:{ssh.port}"


def test_run_returns_output_and_exit_code(ssh):
    res = ssh.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(0)"])
    assert (res.exit_code, res.stdout, res.stderr) == (0, "out\n", "err\n")


def test_every_argument_arrives_untouched(ssh):
    tricky = ["a b", "; rm -rf /nonexistent", "$HOME", "'q'", '"d"', "`x`", "", "\\n", "ü"]
    res = ssh.run([PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *tricky])
    import json

    assert json.loads(res.stdout) == tricky
    assert ssh.command_line(["echo", "a b"]).count("'a b'") == 1


def test_env_and_working_folder_apply_to_the_command(ssh, tmp_path):
    folder = tmp_path / "dir with space;x"
    folder.mkdir()
    res = ssh.run(
        [PY, "-c", "import os; print(os.getcwd()); print(os.environ['EK_X'])"],
        env={"EK_X": "1 2"},
        cwd=str(folder),
    )
    assert res.stdout.splitlines() == [str(folder), "1 2"]
    with pytest.raises(DeviceError, match="does not exist"):
        ssh.run(["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        ssh.run(["true"], env={"BAD NAME": "x"})


def test_stderr_streams_line_by_line_without_the_wrapper_line(ssh):
    seen: list[str] = []
    script = (
        "import sys, time\nfor i in range(3):\n"
        "    print(f'@progress x {i} 3', file=sys.stderr, flush=True); time.sleep(0.05)"
    )
    res = ssh.run([PY, "-c", script], on_stderr_line=seen.append)
    assert seen == ["@progress x 0 3", "@progress x 1 3", "@progress x 2 3"]
    assert "@pgid" not in res.stderr


def test_nonzero_exit_and_missing_program(ssh):
    with pytest.raises(RemoteCommandError, match="exited 3"):
        ssh.run([PY, "-c", "import sys; sys.stderr.write('bad model\\n'); sys.exit(3)"])
    assert ssh.run(["false"], check=False).exit_code == 1
    with pytest.raises(DeviceError, match="was not found"):
        ssh.run(["edgekit-no-such-tool"])


def test_timeout_kills_the_whole_remote_process_group(ssh, server, tmp_path):
    marker = f"ektimeout{time.monotonic_ns()}"
    child = f"{PY} -c 'import time; time.sleep(300)' {marker}-child"
    start = time.monotonic()
    with pytest.raises(DeviceError, match="timed out after 1 s"):
        ssh.run(["sh", "-c", f'{child} & exec {PY} -c "import time; time.sleep(300)" {marker}'], timeout=1)
    assert time.monotonic() - start < 8
    time.sleep(0.5)
    assert not server.processes(marker)  # the command and the child it started in the background


def test_which_and_monotonic_clock(ssh):
    assert ssh.which("sh")
    assert ssh.which("edgekit-no-such-tool") is None
    before = time.monotonic()
    device = ssh.monotonic()
    assert abs(device - before) < 5  # same machine: the same clock


def test_background_process_is_stopped_with_its_children(ssh, server):
    marker = f"ekbg{time.monotonic_ns()}"
    proc = ssh.start(
        ["sh", "-c", f'sleep 200 & echo started; exec {PY} -c "import time; time.sleep(200)" {marker}']
    )
    assert proc.alive() and proc.pgid
    time.sleep(0.3)
    assert server.processes(marker)
    res = proc.stop(grace=1.0)
    assert "started" in res.stdout
    time.sleep(0.3)
    assert not server.processes(marker) and not proc.alive()


def test_close_stops_background_processes(server):
    marker = f"ekclose{time.monotonic_ns()}"
    with server.transport() as t:
        t.start([PY, "-c", "import time; time.sleep(200)", marker])
        time.sleep(0.3)
        assert server.processes(marker)
    time.sleep(0.3)
    assert not server.processes(marker)


def test_put_get_roundtrip_with_a_path_holding_spaces_and_semicolons(ssh, tmp_path):
    local = tmp_path / "blob.bin"
    local.write_bytes(bytes(range(256)) * 4000)
    work = ssh.mkdtemp()
    remote = f"{work}/a dir; touch pwned/model file.bin"
    ssh.put(local, remote)
    assert ssh.sha256(remote) == sha256_file(local)
    back = tmp_path / "back.bin"
    ssh.get(remote, back)
    assert back.read_bytes() == local.read_bytes()
    assert not (tmp_path / "pwned").exists()
    ssh.remove(work)
    assert ssh.run(["test", "-e", work], check=False).exit_code == 1


def test_remove_refuses_paths_outside_its_work_folders(ssh, tmp_path):
    (tmp_path / "keep").write_text("x")
    work = ssh.mkdtemp()
    for path in (str(tmp_path / "keep"), f"{work}/../..", "/"):
        with pytest.raises(DeviceError, match="refusing to delete"):
            ssh.remove(path)
    assert (tmp_path / "keep").exists()
    ssh.remove(work)


def test_unwritable_work_folder_is_one_clear_error(server, tmp_path):
    with server.transport(workdir=str(tmp_path / "nowhere")) as t:
        with pytest.raises(DeviceError, match="cannot make a work folder") as info:
            t.mkdtemp()
    assert "connection.workdir" in info.value.hint


def test_get_of_a_missing_file_is_a_device_error_and_leaves_no_part_file(ssh, tmp_path):
    work = ssh.mkdtemp()
    with pytest.raises(DeviceError, match="cannot read"):
        ssh.get(f"{work}/nope.npz", tmp_path / "x.npz")
    assert not list(tmp_path.glob("x.npz*"))
    ssh.remove(work)


def test_unknown_host_key_is_refused_with_its_fingerprint(server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with server.transport(known_hosts=str(empty)) as t:
        with pytest.raises(HostKeyError, match="SHA256:") as info:
            t.run(["true"])
    assert "ssh-keyscan" in info.value.hint
    fp = subprocess.run(
        ["ssh-keygen", "-lf", f"{server.host_key}.pub"], capture_output=True, text=True
    ).stdout
    assert fp.split()[1] in info.value.message


def test_missing_key_or_known_hosts_file_is_a_config_error(server, tmp_path):
    with (
        server.transport(known_hosts=str(tmp_path / "none")) as t,
        pytest.raises(ConfigError, match="known_hosts"),
    ):
        t.run(["true"])
    with (
        server.transport(key_file=str(tmp_path / "nokey")) as t,
        pytest.raises(ConfigError, match="key file"),
    ):
        t.run(["true"])


def test_auth_refused_is_a_device_error_naming_the_key(server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with server.transport(key_file=str(other)) as t:
        with pytest.raises(DeviceError, match="refused authentication") as info:
            t.run(["true"])
    assert not isinstance(info.value, HostUnreachableError)
    assert "ssh-copy-id" in info.value.hint


def test_unreachable_port_gives_up_after_the_retries(tmp_path, server):
    with server.transport(retries=2) as t:
        t.port = 1  # nothing listens there
        start = time.monotonic()
        with pytest.raises(HostUnreachableError, match="after 2 attempt"):
            t.run(["true"])
    assert time.monotonic() - start < 10


def test_changed_host_key_is_refused_then_a_deliberate_accept_works(tmp_path):
    srv = SshServer(tmp_path / "rotating")
    srv.start()
    try:
        with srv.transport() as t:
            assert t.run(["true"]).ok
        srv.rotate_host_key()
        with srv.transport() as t, pytest.raises(HostKeyError, match="CHANGED") as info:
            t.run(["true"])
        assert "ssh-keygen -R" in info.value.hint
        srv.trust_current_host_key()
        with srv.transport() as t:
            assert t.run(["true"]).ok
    finally:
        srv.close()


def test_sshd_killed_mid_run_is_one_clear_error_and_a_retry_works(tmp_path):
    srv = SshServer(tmp_path / "killed")
    srv.start()
    try:
        marker = f"ekkill{time.monotonic_ns()}"
        with srv.transport() as t:
            import threading

            threading.Timer(1.0, srv.kill_all_sessions).start()
            start = time.monotonic()
            with pytest.raises(HostUnreachableError):
                t.run(
                    [
                        PY,
                        "-c",
                        "import time, sys\nwhile True:\n"
                        "    print('.', file=sys.stderr, flush=True); time.sleep(0.1)",
                        marker,
                    ]
                )
            assert time.monotonic() - start < 10
        time.sleep(1.0)
        assert not srv.processes(marker)
        srv.start()
        with srv.transport() as t:
            assert t.run(["echo", "back"]).stdout == "back\n"
    finally:
        srv.close()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)]
    res = subprocess.run(argv, capture_output=True)
    if res.returncode != 0:
        pytest.skip(reason=SKIP_NO_TMPFS)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_remote_disk_is_one_clear_error_and_leaves_no_partial_file(server, small_disk, tmp_path):
    big = tmp_path / "model.bin"
    big.write_bytes(b"\0" * 512 * 1024)
    with server.transport(workdir=str(small_disk)) as t:
        work = t.mkdtemp()
        with pytest.raises(DeviceError, match="cannot write") as info:
            t.put(big, f"{work}/model.bin")
        assert "df -h" in info.value.hint
        assert t.run(["ls", "-A", work]).stdout == ""  # no model.bin, no model.bin.part
        small = tmp_path / "small.bin"
        small.write_bytes(b"x" * 1000)
        t.put(small, f"{work}/small.bin")  # the retry with room works
        assert t.sha256(f"{work}/small.bin") == sha256_file(small)
        t.remove(work)


def test_cpu_probe_reads_the_board_as_its_runner_would_and_falls_back_to_the_yaml_when_it_is_down(server):
    """A board's CPU is read from it when a run starts (this sshd "board" is this host, so the probe must
    equal the host's facts); the session is closed after; a board that does not answer leaves the YAML's."""
    from edgekit.core.config import load_target
    from edgekit.core.errors import HostUnreachableError
    from edgekit.device.cpuprobe import on_a_board, probed
    from edgekit.device.transport import DeviceSession
    from edgekit.runners.runcore import cpu_features

    pi = load_target("rpi4-onnxruntime")  # a board over SSH; its YAML states [asimd]
    opened = []
    session = DeviceSession(server.transport, on_open=opened.append)
    got = probed(pi, session)
    host = cpu_features()
    assert got.cpu.arch == host["arch"] and got.cpu.features == host["features"]
    assert got.cpu.source == f"probed on {opened[0].name}" and session._transport is None
    down = DeviceSession(lambda: server.transport(port=_closed_port(), retries=1))
    fallback = probed(pi, down)
    assert fallback.cpu.features == pi.cpu.features and "did not answer the CPU probe" in fallback.cpu.source
    must = pi.model_copy(update={"cpu": pi.cpu.model_copy(update={"features": "probe"})})
    with pytest.raises(HostUnreachableError):
        probed(must, down)  # nothing stated to fall back on
    # who is probed: a board over SSH or emulated; not this host, an MCU's driver, or `--device local`
    assert on_a_board(pi, None) and on_a_board(pi, "sim") and not on_a_board(pi, "local")
    assert not on_a_board(load_target("local"), None) and not on_a_board(load_target("stm32h7-tflm"), None)
    assert on_a_board(must, "local")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
