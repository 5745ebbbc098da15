"""The benchmark agent: push an artifact and its runner to a device, run it, collect a BenchResult.

Works over any :class:`~edgekit.device.transport.Transport`: the same steps run on this host
(``LocalTransport``) and on a board over SSH. The device only needs Python, numpy and the runtime.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.contract.artifact import ARTIFACT_JSON, DeviceBuild
from edgekit.backends.contract.base import Artifact
from edgekit.core.errors import ConfigError, DeviceError, RemoteCommandError
from edgekit.core.files import atomic_dir, atomic_write_json, sha256_file
from edgekit.device.power import (
    NOT_MEASURED,
    NullSampler,
    PowerSampler,
    SamplerSession,
    coverage_gap,
    energy_per_inference,
    idle_power,
)
from edgekit.device.provision import artifact_runtime
from edgekit.device.runner_io import Guard, RunnerProgress, parse_json_line, parse_runner_output
from edgekit.device.state import DeviceState
from edgekit.device.transport import CommandResult, Transport
from edgekit.report.record import latency_stats

RUNNERS_DIR = Path(__file__).resolve().parent.parent / "runners"
BACKENDS_DIR = Path(__file__).resolve().parent.parent / "backends"


def runner_path(name: str) -> Path:
    """A device-side file by name: a shared one in ``edgekit/runners/``, else a backend's own.

    A backend added as one package keeps its runner in ``edgekit/backends/<backend>/<name>``.
    """
    shared = RUNNERS_DIR / name
    if shared.is_file():
        return shared
    owned = sorted(BACKENDS_DIR.glob(f"*/{name}"))
    return owned[0] if owned else shared


SHARED_RUNNER_FILES = ("detcore.py", "runcore.py", "powercore.py", "statecore.py")
MISSING_RUNTIME_EXIT = 3
"""A runner's exit code for "the runtime is not installed on this device"."""


@dataclass(frozen=True)
class BenchPlan:
    """What :meth:`Agent.bench` runs on the device, and for how long.

    Attributes:
        bench_input: The timing input, in the artifact's input shape.
        eval_inputs: ``(N, C, H, W)`` stack of preprocessed eval images, or ``None``.
        warmup: Minimum warm-up iterations.
        min_warmup_s: Minimum warm-up seconds (then on until latency settles, at most 5x as long).
        iterations: Minimum timed iterations.
        min_seconds: Minimum timed seconds.
        threads: Intra-op threads; ``None`` = the artifact's ``runtime.threads``.
        conf: Score threshold for eval candidate rows.
        timeout: Seconds before the run is killed (``None`` = no limit).
        cpus: Cores to pin the runner to on the device (``None`` = no pinning).
        idle_s: Idle baseline before the timed window (only when the sampler measures).
        guard: The host's reference output on ``bench_input`` and its tolerance.
        runner: Another runner file for the same artifact (an MCU's ``mcu_serial_run.py``).
        runner_args: Extra arguments for the runner (``--port /dev/ttyACM0``...).

    Example:
        >>> plan = BenchPlan(np.zeros((1, 3, 32, 32), np.float32), iterations=20, min_seconds=0.0)
        >>> plan.warmup, plan.threads
        (10, None)
    """

    bench_input: np.ndarray
    eval_inputs: np.ndarray | None = None
    warmup: int = 10
    min_warmup_s: float = 2.0
    iterations: int = 1000
    min_seconds: float = 30.0
    threads: int | None = None
    conf: float = 0.001
    timeout: float | None = None
    cpus: list[int] | None = None
    idle_s: float = 0.0
    guard: Guard | None = None
    runner: str | None = None
    runner_args: tuple[str, ...] = ()


@dataclass
class BenchResult:
    """One benchmark run of one artifact on one device.

    Attributes:
        runtime: Runtime name (``"onnxruntime"``).
        runtime_version: Its version on the device.
        threads: Intra-op threads used (0 = runtime default).
        latencies_ms: Per-iteration latency of the timed loop.
        first_ms: First inference (cold) latency.
        warmup_ms: Warm-up latencies (after the first inference).
        wall_s: Wall time of the timed loop.
        fps: ``len(latencies_ms) / wall_s``.
        stats: ``n, mean, std, cv, min, p50, p90, p95, p99, max`` (nearest-rank percentiles).
        detections: Per eval image, ``(K, 6)`` candidate rows ``x0, y0, x1, y1, score, class`` in
            network-input pixels (before NMS), or ``None`` without eval inputs.
        power_w: Mean power over the timed window, ``None`` when not measured.
        energy_mj: Energy per inference in mJ, ``None`` when not measured.
        energy_dynamic_mj: Energy above idle per inference, ``None`` without an idle baseline.
        power_note: How power was measured, or why not.
        device: Platform facts reported by the runner.
        thermal_before: ``{zone: C}`` before the run, ``None`` if the device has no thermal zones.
        thermal_after: Same after the run.
        raw: The runner's JSON line, parsed.
        idle_w: Idle power before the timed window, same power mode (``None`` = not taken).
        power_samples: Power samples inside the timed window.
        power_facts: Sensor, interval, clock, rail scope and clock offset (meter) of the trace.
        state_before: Device state before the run (board, L4T, power mode, clocks, temperatures).
        state_after: The same after the run.
        throttling: Signs of throttling (empty = none seen).
        guard: The correctness guard: the device output's sha256 and its cosines to the host's.
    """

    runtime: str
    runtime_version: str
    threads: int
    latencies_ms: list[float]
    first_ms: float
    warmup_ms: list[float]
    wall_s: float
    fps: float
    stats: dict[str, float]
    detections: list[np.ndarray] | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    energy_dynamic_mj: float | None = None
    power_note: str = NOT_MEASURED
    device: dict[str, Any] = field(default_factory=dict)
    thermal_before: dict[str, float] | None = None
    thermal_after: dict[str, float] | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    idle_w: float | None = None
    power_samples: int | None = None
    power_facts: dict[str, Any] = field(default_factory=dict)
    state_before: DeviceState = field(default_factory=DeviceState)
    state_after: DeviceState = field(default_factory=DeviceState)
    throttling: list[str] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-iteration lists, no detections, no raw line)."""
        skip = {"latencies_ms", "warmup_ms", "detections", "raw", "state_before", "state_after"}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["eval_images"] = None if self.detections is None else len(self.detections)
        return out


class Agent:
    """Runs artifacts on a device through a transport, with power sampled on the device.

    The protocol of one :meth:`bench` (research/device-benchmarking.md §5.2-5.4): device state first
    (board, L4T, power mode, clocks, governors, temperatures); the power sampler starts and an idle
    baseline is taken in the same power mode; the runner warms up until latency settles, runs the
    timed loop (≥ N iterations and ≥ T seconds) and the eval set; the state is read again; throttling
    is flagged (clock drop, temperature rise, latency drift first vs last 10 %). With a host
    reference output, the device's output on the timing input must match it before any speed counts.

    Args:
        transport: Where to run (:class:`~edgekit.device.transport.LocalTransport`,
            :class:`~edgekit.device.ssh.SSHTransport`).
        sampler: Power sampler; ``None`` = :class:`~edgekit.device.power.NullSampler` (not measured).
        python: Interpreter on the device; ``None`` = the transport's (the venv's on ``local``).

    Example:
        >>> from edgekit.device.transport import LocalTransport
        >>> agent = Agent(LocalTransport())
        >>> plan = BenchPlan(x, warmup=10, iterations=200, min_seconds=2, threads=2)  # doctest: +SKIP
        >>> res = agent.bench("runs/x/build", plan)  # doctest: +SKIP
        >>> res.stats["p99"], res.fps  # doctest: +SKIP
    """

    def __init__(
        self,
        transport: Transport,
        sampler: PowerSampler | None = None,
        python: str | None = None,
        prepare: str | None = None,
    ):
        self.transport = transport
        self.prepare = prepare  # the command a missing or skewed runtime's refusal names
        self.sampler = sampler or NullSampler()
        if not isinstance(self.sampler, PowerSampler):  # runtime_checkable: every declared member
            missing = [m for m in ("name", "rails", "files", "measures", "note", "facts", "start", "stop")
                       if not hasattr(self.sampler, m)]  # fmt: skip
            raise ConfigError(
                f"power sampler {type(self.sampler).__name__} lacks {', '.join(missing)}",
                "give it every member of edgekit.device.power.PowerSampler",
            )
        self.python = python or getattr(transport, "default_python", "python3")

    def bench(self, artifact_dir: str | Path, plan: BenchPlan, *, progress: bool = True) -> BenchResult:
        """Push the artifact and runner, time it, collect eval detections, clean up.

        Args:
            artifact_dir: A built artifact folder (verified before anything is pushed).
            plan: What to run and how long (:class:`BenchPlan`).
            progress: Draw a progress bar from the runner's ``@progress`` lines.

        Raises:
            ModelError: The artifact is missing or tampered with.
            DeviceError: Upload checksum mismatch, timeout, unreadable runner output, or device outputs
                that fail the correctness guard.
            RemoteCommandError: The runner exited non-zero (message shows its stderr tail).
        """
        artifact = Artifact.load(artifact_dir)
        board_versions = artifact_runtime(self.transport, self.python, artifact.backend, self.prepare)
        work = self.transport.mkdtemp()
        try:
            with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as host_tmp:
                argv = self._stage(
                    artifact, work, Path(host_tmp), plan.bench_input, plan.eval_inputs, plan.runner
                )
                argv += list(plan.runner_args)
                argv += _runner_flags(plan)
                argv += ["--cpus", ",".join(map(str, plan.cpus))] if plan.cpus else []
                argv += ["--output-out", posixpath.join(work, "guard.npy")]
                before = self.state(work)
                deadline = (plan.timeout or 4 * 3600.0) + plan.idle_s + 60
                self.sampler.start(SamplerSession(self.transport, work, self.python, deadline))
                try:
                    idle = self._idle(plan.idle_s)
                    result = self._run(argv, plan.timeout, progress)
                finally:
                    samples = self.sampler.stop()
                after = self.state(work)
                raw = parse_runner_output(result)
                dets = self._fetch_eval(raw, work, Path(host_tmp))
                guard_record = self._check_guard(plan.guard, work, Path(host_tmp))
        finally:
            self.transport.remove(work)
        res = self._result(raw, dets, samples, before, after, idle)
        res.guard = guard_record
        if board_versions:
            res.device["packages"] = board_versions
        return res

    def state(self, work: str) -> DeviceState:
        """The device's state (board, L4T, power mode, clocks, governors, temperatures, throttling)."""
        return DeviceState.from_report(self._state_report(work))

    def _state_report(self, work: str) -> dict[str, Any]:
        script = posixpath.join(work, "statecore.py")
        res = self.transport.run([self.python, script, "state"], timeout=60, check=False)
        try:
            return dict(json.loads(res.stdout.strip() or "{}"))
        except (json.JSONDecodeError, TypeError, ValueError):
            return {"error": res.tail(3) or "no output"}

    # -- steps -------------------------------------------------------------------------------------
    def _stage(
        self,
        artifact: Artifact,
        work: str,
        host_tmp: Path,
        x: np.ndarray,
        eval_x: np.ndarray | None,
        runner_name: str | None = None,
    ) -> list[str]:
        remote_art = posixpath.join(work, "artifact")
        for rel in artifact.all_files():
            self._push(artifact.dir / rel, posixpath.join(remote_art, *Path(rel).parts))
        runner = runner_path(runner_name or artifact.runner)
        extra = (artifact.runner, *artifact.meta.get("runner_files", ()), *self.sampler.files)
        self._push_runner(runner.name, work, extra)
        argv = [self.python, posixpath.join(work, runner.name), "--artifact", remote_art]
        argv += ["--inputs", self._push_array(x, "input.npy", work, host_tmp)]
        if eval_x is not None:
            argv += ["--eval-inputs", self._push_array(eval_x, "eval.npy", work, host_tmp)]
            argv += ["--eval-out", posixpath.join(work, "eval.npz")]
        return argv

    def _push_runner(self, runner: str, work: str, extra: tuple[str, ...] = ()) -> None:
        names = dict.fromkeys((runner, *SHARED_RUNNER_FILES, *extra))
        for name in names:
            self._push(runner_path(name), posixpath.join(work, name))

    def _push(self, local: Path, remote: str) -> None:
        if not local.is_file():
            raise DeviceError(f"{local} is missing on the host", "reinstall edgekit or rebuild the artifact")
        self.transport.put(local, remote)
        if self.transport.sha256(remote) != sha256_file(local):
            raise DeviceError(
                f"upload of {local.name} to {remote} is corrupt (sha256 differs after put)",
                "check free space on the device and the link, then retry",
            )

    def _push_array(self, array: np.ndarray, name: str, work: str, host_tmp: Path) -> str:
        local = host_tmp / name
        np.save(local, np.ascontiguousarray(array, dtype=np.float32))
        remote = posixpath.join(work, name)
        self._push(local, remote)
        return remote

    def _idle(self, idle_s: float) -> tuple[float, float] | None:
        if not self.sampler.measures or idle_s <= 0:
            return None
        t0 = self.transport.monotonic()
        time.sleep(idle_s)
        return t0, self.transport.monotonic()

    def _run(self, argv: list[str], timeout: float | None, progress: bool) -> CommandResult:
        with RunnerProgress(enabled=progress) as bar:
            try:
                return self.transport.run(argv, timeout=timeout, on_stderr_line=bar.feed)
            except RemoteCommandError as exc:
                if exc.result.exit_code == MISSING_RUNTIME_EXIT:
                    raise DeviceError(
                        f"the runtime is not installed on {self.transport.name}: {exc.result.tail(1)}",
                        "install it on the device as the message says; nothing was measured",
                    ) from exc
                raise

    # -- device builds -------------------------------------------------------------------------------
    def build_on_device(
        self,
        staged_dir: str | Path,
        out_dir: str | Path,
        *,
        timeout: float | None = None,
        progress: bool = True,
    ) -> Artifact:
        """Build a staged artifact on the device; write the completed artifact to ``out_dir``.

        Pushes the staged files and the runner, runs the runner's ``--build`` mode there, fetches the
        result, completes ``artifact.json`` (``model`` file, its sha256, the device's tool version,
        ``device_build.state = "built"``), then runs the runner's ``--check`` mode on the device with the
        completed artifact. ``out_dir`` appears only when all of that succeeded.

        Raises:
            ConfigError: The artifact is not a staged device build.
            DeviceError: The runtime is missing on the device, or the build or the check failed there.
        """
        staged = Artifact.load(staged_dir)
        info = staged.device_build
        if info is None or info.state != "staged":
            state = info.state if info is not None else None
            raise ConfigError(
                f"{staged_dir} is not a staged device build (device_build.state is {state!r})",
                "stage it with the backend's build() (edgekit build / deploy) first",
            )
        work = self.transport.mkdtemp()
        try:
            remote_art = posixpath.join(work, "artifact")
            for rel in staged.all_files():
                self._push(staged.dir / rel, posixpath.join(remote_art, *Path(rel).parts))
            self._push_runner(staged.runner, work, tuple(staged.meta.get("runner_files", ())))
            runner = posixpath.join(work, staged.runner)
            engine = posixpath.join(remote_art, info.model_file)
            argv = [self.python, runner, "--artifact", remote_art, "--build", "--engine-out", engine]
            built = parse_json_line(self._run(argv, timeout, progress))
            with atomic_dir(out_dir) as final:
                for rel in staged.all_files():
                    (final / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(staged.dir / rel, final / rel)
                self.transport.get(engine, final / info.model_file)
                meta, done = _completed_meta(staged.meta, info, built, final, self.transport.name)
                atomic_write_json(final / ARTIFACT_JSON, meta)
                self._push(final / ARTIFACT_JSON, posixpath.join(remote_art, ARTIFACT_JSON))
                check = [self.python, runner, "--artifact", remote_art, "--check"]
                checked = parse_json_line(self._run(check, timeout, False))
                meta["device_build"] = done.model_copy(update={"check": checked}).model_dump(mode="json")
                atomic_write_json(final / ARTIFACT_JSON, meta)
        finally:
            self.transport.remove(work)
        return Artifact.load(out_dir)

    def _fetch_eval(self, raw: dict[str, Any], work: str, host_tmp: Path) -> list[np.ndarray] | None:
        if not raw.get("eval"):
            return None
        local = host_tmp / "eval.npz"
        self.transport.get(posixpath.join(work, raw["eval"]["file"]), local)
        with np.load(local) as npz:
            return [npz[f"dets_{i}"] for i in range(raw["eval"]["images"])]

    def _check_guard(self, guard: Guard | None, work: str, host_tmp: Path) -> dict[str, Any]:
        local = host_tmp / "guard.npy"
        self.transport.get(posixpath.join(work, "guard.npy"), local)
        got = np.load(local)
        record: dict[str, Any] = {"output_sha256": hashlib.sha256(got.tobytes()).hexdigest()}
        if guard is None:
            return {**record, "checked": False, "reason": "no host reference output for this artifact"}
        return {**record, **guard.check(got)}

    def _result(
        self,
        raw: dict,
        dets: list | None,
        samples: list,
        before: DeviceState,
        after: DeviceState,
        idle: tuple | None,
    ) -> BenchResult:
        lat = [float(v) for v in raw["latencies_ms"]]
        res = BenchResult(
            runtime=raw["runtime"],
            runtime_version=raw["runtime_version"],
            threads=int(raw["threads"]),
            latencies_ms=lat,
            first_ms=float(raw["first_ms"]),
            warmup_ms=[float(v) for v in raw["warmup_ms"]],
            wall_s=float(raw["wall_s"]),
            fps=len(lat) / float(raw["wall_s"]),
            stats=latency_stats(lat),
            detections=dets,
            device=dict(raw.get("device") or {}),
            thermal_before=before.thermal or None,
            thermal_after=after.thermal or None,
            raw=raw,
            state_before=before,
            state_after=after,
        )
        res.throttling = _throttle_flags(before.raw, after.raw, lat)
        self._energy(res, samples, raw.get("window") or {}, idle)
        return res

    def _energy(self, res: BenchResult, samples: list, window: dict, idle: tuple | None) -> None:
        sampler = self.sampler
        res.power_facts = dict(sampler.facts)
        if not sampler.measures:
            res.power_note = sampler.note or NOT_MEASURED
            return
        if not samples:
            res.power_note = sampler.note or "not measured: no power samples were recorded"
            return
        t0, t1 = float(window.get("t0", 0.0)), float(window.get("t1", 0.0))
        gap = coverage_gap(samples, t0, t1)
        if gap:
            res.power_note = f"not measured: {gap}"
            return
        idle_w = idle_power(samples, *idle) if idle else None
        energy = energy_per_inference(samples, t0, t1, len(res.latencies_ms), idle_w=idle_w)
        res.power_w, res.energy_mj = energy.mean_power_w, energy.mj_per_inference
        res.energy_dynamic_mj, res.idle_w = energy.dynamic_mj_per_inference, idle_w
        res.power_samples = energy.samples_in_window
        res.power_note = f"{sampler.name}: {sampler.rails}"


def _throttle_flags(before: dict, after: dict, latencies: list[float]) -> list[str]:
    from edgekit.runners import statecore

    try:
        return list(statecore.throttle_flags(before, after, latencies))
    except Exception as exc:  # noqa: BLE001 - a state the parser does not know must not lose the run
        return [f"throttling not checked: {type(exc).__name__}: {exc}"]


def _completed_meta(
    meta: dict, info: DeviceBuild, built: dict, final: Path, where: str
) -> tuple[dict[str, Any], DeviceBuild]:
    """``artifact.json`` of the board's build, and its completed ``device_build``.

    The sidecar gets the model file and its hash, the runtime's version on the board, and where it was built.
    """
    out = json.loads(json.dumps(meta))
    out["files"]["model"] = info.model_file
    out["sha256"][info.model_file] = sha256_file(final / info.model_file)
    version = built.get("runtime_version") or "unknown"
    out["tools"] = {**out.get("tools", {}), out["backend"]: version}
    done = DeviceBuild(
        **{
            **info.model_dump(),
            "state": "built",
            "on": where,
            "version": version,
            "seconds": built.get("seconds"),
            "argv": built.get("argv"),
            "warnings": built.get("warnings"),
            "device": built.get("device"),
        }
    )
    out["device_build"] = done.model_dump(mode="json")
    return out, done


def _runner_flags(plan: BenchPlan) -> list[str]:
    flags = ["--warmup", str(plan.warmup), "--min-warmup-s", str(plan.min_warmup_s)]
    flags += ["--iterations", str(plan.iterations), "--min-seconds", str(plan.min_seconds)]
    flags += ["--conf", str(plan.conf)]
    return flags + (["--threads", str(plan.threads)] if plan.threads is not None else [])
