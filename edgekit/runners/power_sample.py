"""Device-side power sampler: a background process that logs watts on the device's monotonic clock.

Stdlib only; copied to the board beside ``powercore.py``. The agent starts it before the benchmark and
stops it after (SIGTERM), then fetches the log; the benchmark reports its timed window on the same
``time.monotonic()`` clock, so the two line up without clock sync (research §5.3).

Usage:
    python power_sample.py --sensor {tegrastats,ina3221,rpi} --interval-ms N --out FILE \
        [--max-seconds S] [--rails A,B] [--watch-stdin]

The log is JSON lines, appended and flushed one at a time so a killed sampler leaves only whole lines:
a header ``{"sensor", "interval_ms", "scope", "clock": "monotonic", "pid"}`` written with the first
reading (its scope names the rails summed), then ``{"t", "w", "rails": {name: mW}}`` per sample.

It stops on SIGTERM/SIGINT, after ``--max-seconds`` (so nothing keeps running if the host vanished), and,
with ``--watch-stdin``, when stdin reaches EOF (the SSH channel closed). A sensor it cannot use gives one
``power_sample: error: ...`` line on stderr and exit code 2.

Environment: ``EDGEKIT_TEGRASTATS`` (tegrastats binary; default: PATH), ``EDGEKIT_SYSFS_ROOT``
(root of the ``/sys`` tree read for the INA3221; default ``/``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import powercore  # noqa: E402

SENSORS = ("tegrastats", "ina3221", "rpi")
NOPASSWD_HINT = (
    "allow it without a password: add `<user> ALL=(root) NOPASSWD: {binary}` with visudo "
    "(then `sudo -n tegrastats` works), or use --sensor ina3221"
)


class SamplerError(Exception):
    """A sensor that cannot be used; printed as one line with what to do, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block, on a device console
        print(f"power_sample: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the sampler's command line."""
    p = _Parser(prog="power_sample", description="Log power samples as JSON lines.")
    p.add_argument("--sensor", required=True, choices=SENSORS, help="where the watts come from")
    p.add_argument("--interval-ms", type=int, default=100, help="sampling interval (ms)")
    p.add_argument("--out", required=True, help="JSON-lines file to append to")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="safety deadline (s)")
    p.add_argument("--rails", help="comma-separated rails to sum instead of the module's total rule")
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin reaches EOF")
    args = p.parse_args(argv)
    if args.interval_ms <= 0 or args.max_seconds <= 0:
        p.error("--interval-ms and --max-seconds must be positive")
    return args


# -- sources: each yields (t, {rail: mW}) readings ---------------------------------------------------------


class PolledSource:
    """A sensor read once per interval (INA3221 sysfs, ``vcgencmd pmic_read_adc``)."""

    def __init__(self, read, interval_s: float, scope: str | None = None) -> None:
        self.read = read
        self.scope = scope  # what the rails cover when the module rule cannot tell (the Pi 5 PMIC)
        self.interval_s = interval_s
        self.next_t = time.monotonic()

    def fds(self) -> list[int]:
        """No file descriptors to watch: the loop only waits for the next poll."""
        return []

    def wake_at(self) -> float:
        """Monotonic time of the next reading."""
        return self.next_t

    def on_fd(self, fd: int) -> list[tuple[float, dict]]:
        """Never called (no fds)."""
        return []

    def on_time(self, now: float) -> list[tuple[float, dict]]:
        """Read if the interval is due; the stamp is the middle of the read."""
        if now < self.next_t:
            return []
        self.next_t = max(self.next_t + self.interval_s, now)
        start = time.monotonic()
        try:
            rails = self.read()
        except (OSError, ValueError):
            return []  # a transient sysfs/firmware hiccup costs one sample
        return [((start + time.monotonic()) / 2, rails)]

    def close(self) -> None:
        """Nothing to release."""


def ina3221_source(interval_s: float) -> PolledSource:
    """Read the INA3221 hwmon/IIO files under ``EDGEKIT_SYSFS_ROOT`` each interval."""
    root = os.environ.get("EDGEKIT_SYSFS_ROOT", "/")
    channels = powercore.find_ina3221(root)
    if not channels:
        raise SamplerError(
            f"no INA3221 rails under {Path(root) / 'sys/bus/i2c/drivers'} (ina3221 or ina3221x); "
            "this board has no on-module power monitor: use --sensor tegrastats or an external meter"
        )
    return PolledSource(lambda: powercore.read_ina3221(channels), interval_s)


def _pmic_read() -> dict:
    out = powercore.run_tool(["vcgencmd", "pmic_read_adc"])
    rails = powercore.parse_pmic_adc(out or "")["rails"]
    if not rails:
        raise ValueError("no PMIC rails")
    return {name: round(w * 1000.0, 3) for name, w in rails.items()}


def rpi_source(interval_s: float) -> PolledSource:
    """Run ``vcgencmd pmic_read_adc`` (Raspberry Pi 5) each interval."""
    if shutil.which("vcgencmd") is None:
        raise SamplerError("vcgencmd not found on PATH (install raspi-utils / libraspberrypi-bin)")
    try:
        _pmic_read()
    except ValueError:
        raise SamplerError(
            "`vcgencmd pmic_read_adc` gave no rails: only the Raspberry Pi 5 PMIC reports power; "
            "on a Pi 4 use an external meter (INA219/INA226 or a USB-C logger)"
        ) from None
    return PolledSource(_pmic_read, interval_s, powercore.PMIC_SCOPE)


class TegrastatsSource:
    """A ``tegrastats --interval N`` child; each line is stamped when read, never by its date prefix.

    Lines that arrive together are spaced back by the interval (:meth:`_stamps`).

    Plain first; if that prints no rails (some images need root for them) or nothing, ``sudo -n``.
    """

    def __init__(self, binary: str, interval_ms: int) -> None:
        self.binary = binary
        self.interval_ms = interval_ms
        self.attempts = [[binary, "--interval", str(interval_ms)]]
        if shutil.which("sudo"):
            self.attempts.append(["sudo", "-n", binary, "--interval", str(interval_ms)])
        self.scope = None
        self.proc: subprocess.Popen | None = None
        self.running = False  # True once a line with rails arrived
        self.why = ""  # what the failed attempts printed
        self.last_t = float("-inf")  # stamp of the last line read
        self._start_next()

    def _start_next(self) -> None:
        if not self.attempts:
            raise SamplerError(
                f"tegrastats printed no power rails ({self.why.strip() or 'no output'}); without root "
                f"some images hide them: {NOPASSWD_HINT.format(binary=self.binary)}"
            )
        self.close()
        self.proc = subprocess.Popen(
            self.attempts.pop(0),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the sampler only; it stops the child
        )
        for pipe in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(pipe.fileno(), False)
        self.buffer = b""
        self.err_open = True
        self.first_by = time.monotonic() + 3 * self.interval_ms / 1000 + 3.0

    def fds(self) -> list[int]:
        """The child's stdout and stderr."""
        if self.proc is None:
            return []
        return [self.proc.stdout.fileno()] + ([self.proc.stderr.fileno()] if self.err_open else [])

    def wake_at(self) -> float:
        """While probing, the time by which a first line must have come."""
        return float("inf") if self.running else self.first_by

    def on_time(self, now: float) -> list[tuple[float, dict]]:
        """Give up on an attempt that printed nothing in time."""
        if not self.running and now >= self.first_by:
            self.why = "nothing within the first intervals"
            self._start_next()
        return []

    def on_fd(self, fd: int) -> list[tuple[float, dict]]:
        """Read what the child printed; one reading per complete line."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:  # an fd number reused by the next attempt's pipe, nothing to read yet
            return []
        now = time.monotonic()
        if fd == self.proc.stderr.fileno():
            self.why = (self.why + chunk.decode(errors="replace"))[-300:]
            self.err_open = bool(chunk)  # at EOF select would report it readable forever
            return []
        if not chunk:
            return self._on_exit()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        proc, readings = self.proc, []
        for t, line in zip(self._stamps(now, len(lines)), lines, strict=True):
            reading = self._reading(t, line)
            if self.proc is not proc:  # that line moved on to the next attempt: the rest is stale
                break
            readings += [reading] if reading else []
        return readings

    def _stamps(self, now: float, n: int) -> list[float]:
        """When the ``n`` lines read at ``now`` were printed: one per interval, the last just now.

        Lines that queued in the pipe while this process was descheduled arrive in one read; one stamp
        for all of them would put several different readings at one instant.  If they came faster
        than the interval, they are spread evenly after the previous stamp instead.
        """
        step = self.interval_ms / 1000
        stamps = [now - (n - 1 - k) * step for k in range(n)]
        if n and stamps[0] <= self.last_t:
            stamps = [self.last_t + (now - self.last_t) * (k + 1) / n for k in range(n)]
        if n:
            self.last_t = stamps[-1]
        return stamps

    def _reading(self, now: float, line: bytes) -> tuple[float, dict] | None:
        rails = powercore.parse_tegrastats(line.decode(errors="replace"))["rails"]
        if not rails:
            if not self.running:
                self.why = "a line without rails"
                self._start_next()
            return None
        self.running = True
        return now, {name: v["cur_mw"] for name, v in rails.items()}

    def _on_exit(self) -> list[tuple[float, dict]]:
        code = self.proc.wait()
        if self.running:
            raise SamplerError(f"tegrastats exited (code {code}): {' '.join(self.why.split())[-200:]}")
        self._start_next()
        return []

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 2 s) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.proc = None


def tegrastats_source(interval_ms: int) -> TegrastatsSource:
    """Start tegrastats from ``EDGEKIT_TEGRASTATS`` or PATH."""
    binary = os.environ.get("EDGEKIT_TEGRASTATS") or shutil.which("tegrastats")
    if not binary or not Path(binary).is_file():
        raise SamplerError(
            "tegrastats not found (not on PATH, EDGEKIT_TEGRASTATS unset or wrong); it ships with "
            "JetPack in /usr/bin: set EDGEKIT_TEGRASTATS=/path/to/tegrastats or use --sensor ina3221"
        )
    return TegrastatsSource(binary, interval_ms)


def make_source(sensor: str, interval_ms: int):
    """The source for ``sensor``."""
    if sensor == "tegrastats":
        return tegrastats_source(interval_ms)
    if sensor == "ina3221":
        return ina3221_source(interval_ms / 1000)
    return rpi_source(interval_ms / 1000)


# -- the loop ---------------------------------------------------------------------------------------------


class Log:
    """The JSON-lines log: header with the first reading, then one flushed line per sample."""

    def __init__(self, path: str, args: argparse.Namespace, scope: str | None = None) -> None:
        self.fh = Path(path).open("a")  # open for the sampler's life
        self.args = args
        self.rails_spec = [r.strip() for r in args.rails.split(",") if r.strip()] if args.rails else None
        self.scope = scope if not self.rails_spec else None
        self.count = 0

    def write(self, t: float, rails: dict) -> None:
        """Append one sample (and the header before the first)."""
        try:
            watts, scope = powercore.total_power_w(rails, self.rails_spec)
        except ValueError as exc:
            raise SamplerError(f"{exc}; pick rails with --rails A,B") from None
        if self.count == 0:
            self._line({"sensor": self.args.sensor, "interval_ms": self.args.interval_ms,
                        "scope": self.scope or scope,
                        "clock": "monotonic", "pid": os.getpid()})  # fmt: skip
        self._line({"t": round(t, 6), "w": round(watts, 6), "rails": rails})
        self.count += 1

    def _line(self, obj: dict) -> None:
        self.fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.fh.flush()

    def close(self) -> None:
        """Close the file."""
        self.fh.close()


class Stopper:
    """Why the loop should end: a signal (through a wake-up pipe), stdin EOF, or the deadline."""

    def __init__(self, max_seconds: float, watch_stdin: bool) -> None:
        self.deadline = time.monotonic() + max_seconds
        self.reason = ""
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.stdin_fd = sys.stdin.fileno() if watch_stdin else None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.reason = signal.Signals(signum).name

    def fds(self) -> list[int]:
        """The wake-up pipe and, if watched, stdin."""
        return [self.wake_r] + ([self.stdin_fd] if self.stdin_fd is not None else [])

    def on_fd(self, fd: int) -> None:
        """Drain the wake-up pipe, or notice stdin's EOF."""
        if fd == self.wake_r:
            os.read(self.wake_r, 512)
        elif not os.read(fd, 65536):
            self.reason = self.reason or "stdin closed"

    def check(self, now: float) -> str:
        """The reason to stop, or '' to go on."""
        if not self.reason and now >= self.deadline:
            self.reason = "max-seconds"
        return self.reason


def sample(source, log: Log, stopper: Stopper) -> str:
    """Run until the stopper says why; return the reason."""
    while not stopper.check(time.monotonic()):
        now = time.monotonic()
        timeout = max(0.0, min(stopper.deadline, source.wake_at()) - now)
        ready, _, _ = select.select(stopper.fds() + source.fds(), [], [], timeout)
        for fd in set(ready) & set(stopper.fds()):
            stopper.on_fd(fd)
        if stopper.reason:  # a signal or EOF came with this batch: do not read a child that died of it
            break
        readings = []
        for fd in ready:
            if fd in source.fds():
                readings += source.on_fd(fd)
        readings += source.on_time(time.monotonic())
        for t, rails in readings:
            log.write(t, rails)
    return stopper.reason


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, sample until told to stop, report why on stderr; 0 on a clean stop."""
    args = parse_args(argv)
    stopper = Stopper(args.max_seconds, args.watch_stdin)
    source = make_source(args.sensor, args.interval_ms)
    try:
        log = Log(args.out, args, source.scope)
    except OSError as exc:
        source.close()
        raise SamplerError(f"cannot write {args.out}: {exc.strerror}") from None
    try:
        reason = sample(source, log, stopper)
    finally:
        source.close()
        log.close()
    print(f"power_sample: stopped ({reason}) after {log.count} samples", file=sys.stderr)
    return 0


def main() -> None:
    """Entry point: :func:`run` with one clear error line instead of a traceback."""
    try:
        sys.exit(run())
    except SamplerError as exc:
        print(f"power_sample: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
