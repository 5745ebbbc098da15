"""Targets (``targets/<name>.yaml``) as validated models.

Unknown keys and missing fields are errors naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def targets_dir() -> Path:
    """Folder of the board presets shipped with edgekit."""
    return REPO_ROOT / "targets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalConnection(_Strict):
    """Run on this host."""

    type: Literal["local"] = "local"


class SSHConnection(_Strict):
    """Reach the board over SSH. Keys only: passwords are never read from YAML.

    Attributes:
        host: Host name or address of the board.
        port: SSH port.
        user: Login user.
        key_file: Private key file (``~`` expanded).
        known_hosts: File the board's host key is checked against (never auto-accepted).
        workdir: Where the agent makes its temporary folders on the board.
        python: Python interpreter on the board that runs the runner.
        connect_timeout: Seconds per connection attempt.
        retries: Connection attempts (with backoff) before the board counts as unreachable.
        dead_after_s: Seconds without an answer after which a running command's link counts as dead.
        patience: Multiplies the agent's command timeouts for a slow board (an emulated one: 20).
    """

    type: Literal["ssh"]
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str
    key_file: str = "~/.ssh/id_ed25519"
    known_hosts: str = "~/.ssh/known_hosts"
    workdir: str = "/tmp"
    python: str = "python3"
    connect_timeout: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=1, le=10)
    dead_after_s: float = Field(8.0, ge=2)
    patience: float = Field(1.0, ge=1, le=1000)


Connection = Annotated[LocalConnection | SSHConnection, Field(discriminator="type")]


class SerialLink(_Strict):
    """An MCU on a serial port of the computer the agent reaches (its companion SBC, or this host).

    Attributes:
        port: Serial device (``/dev/ttyACM0``).
        baud: Baud rate.
        timeout: Seconds without an answer after which the board counts as hung.
    """

    port: str
    baud: int = Field(921600, ge=9600)
    timeout: float = Field(5.0, gt=0)


class RuntimeOptions(_Strict):
    """How the benchmark runs on the device (device-benchmarking.md §5.2)."""

    threads: int | None = Field(None, ge=1, description="inference threads; null = runtime default")
    warmup: int = Field(50, ge=0, description="warm-up iterations")
    min_warmup_s: float = Field(1.0, ge=0)
    iterations: int = Field(300, ge=1, description="timed iterations (at least)")
    min_seconds: float = Field(3.0, ge=0, description="timed loop length (at least)")
    power_mode: str | None = Field(None, description="e.g. nvpmodel mode name on Jetson; recorded")
    cpu_affinity: list[int] | None = Field(
        None, description="cores the runner is pinned to (e.g. an RK3588's A76 cores 4-7); recorded"
    )
    governor: str | None = Field(
        None, description="cpufreq governor the board should run (e.g. performance); checked and recorded"
    )
    serial: SerialLink | None = Field(
        None, description="an MCU on a serial port: the agent runs mcu_serial_run.py there instead"
    )


class PowerSpec(_Strict):
    """Which power sensor the agent samples (see :data:`edgekit.device.power.SAMPLERS`).

    Attributes:
        sensor: ``none``, ``tegrastats``, ``ina3221``, ``rpi`` (Pi 5 PMIC) or ``meter`` (external).
        interval_ms: Sampling period.
        rails: Rails summed into the total (``None`` = the board's rule: VDD_IN, POM_5V_IN...).
        idle_s: Idle baseline before the timed window, same power mode (0 = none).
        meter_command: For ``meter``: a host program printing one reading in watts per line.
        scope: What the watts cover, for a meter (rails of on-board sensors are named by the board).
    """

    sensor: Literal["none", "tegrastats", "ina3221", "rpi", "meter"] = "none"
    interval_ms: int = Field(100, ge=10)
    rails: list[str] | None = None
    idle_s: float = Field(10.0, ge=0)
    meter_command: list[str] | None = None
    scope: str | None = None


class PreprocessOptions(_Strict):
    """The model's preprocessing as the target states it (``input_size`` is the target's own key).

    Unset fields keep :class:`~edgekit.data.preprocess.PreprocessSpec`'s defaults (letterbox, RGB,
    pixels / 255, no mean/std, NCHW). A user ONNX whose metadata says otherwise is an error naming both.
    """

    resize: Literal["letterbox", "stretch"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: Literal["RGB", "BGR"] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    pad_value: int | None = Field(None, ge=0, le=255)


class CpuSpec(_Strict):
    """The device CPU's instruction set, where INT8 kernels depend on it (ONNX Runtime on x86).

    Attributes:
        arch: ``x86_64``, ``aarch64``, ``armv7l``... (``None`` = not stated).
        features: ``host`` = read from this host (the ``local`` target); ``probe`` = read from the board
            (``uname -m`` and its ``/proc/cpuinfo``, over its connection) when a run starts; otherwise the
            Linux /proc/cpuinfo flags that matter, e.g. ``[avx2, avx512_vnni]`` or ``[asimd, asimddp]``.
        source: Where probed facts came from (set by the probe, never by a YAML).
    """

    arch: str | None = None
    features: Literal["host", "probe"] | list[str] = []
    source: str | None = Field(None, exclude=True)


class Limits(_Strict):
    """Hard budgets of the board (MCUs), and its core (the firmware bundle is compiled for it)."""

    flash_kb: int | None = Field(None, ge=1)
    ram_kb: int | None = Field(None, ge=1)
    core: str | None = Field(None, description="e.g. cortex-m7: arm-none-eabi -mcpu for the bundle")


class Target(_Strict):
    """A board preset: where the model ends up and how it is measured.

    Example:
        >>> load_target("local").backend
        'onnxruntime'
    """

    name: str
    description: str
    board: str
    backend: str
    precision: Literal["fp32", "fp16", "int8"]
    input_size: int = Field(160, ge=16, le=4096)
    preprocess: PreprocessOptions = PreprocessOptions()
    aliases: list[str] = []
    connection: Connection
    runtime: RuntimeOptions = RuntimeOptions()
    power: PowerSpec = PowerSpec()
    cpu: CpuSpec = CpuSpec()
    limits: Limits = Limits()
    emulator: str | None = Field(
        None,
        description="set when the board is emulated ('qemu-user cortex-a72'): its time is not board time",
    )
    source: str | None = Field(None, exclude=True)


def device_cpu(target: Target) -> tuple[dict | None, str]:
    """The target device's CPU facts (``{"arch", "features", "int8_dot"}``) and where they came from.

    ``cpu.features: host`` reads this host; a list is taken as stated in the YAML; nothing stated
    gives ``(None, "not stated")``.
    """
    from edgekit.runners.runcore import cpu_features, int8_dot

    spec = target.cpu
    if spec.features == "host":
        return cpu_features(), "this host"
    if spec.features == "probe":
        return None, "to be probed on the board when the run starts"
    if not spec.arch:
        return None, "not stated"
    features = list(spec.features)
    return {"arch": spec.arch, "features": features, "int8_dot": int8_dot(spec.arch, features)}, str(
        spec.source or target.source or target.name
    )


def _key_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p in ("local", "ssh")))


def _validation_message(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = _key_path(err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif kind == "missing":
            lines.append(f"missing field '{key}'")
        else:
            lines.append(f"'{key}': {err['msg']}")
    return f"{path}: " + "; ".join(lines)


def parse_target(path: Path) -> Target:
    """Load and validate one target file."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})", "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys", "see targets/local.yaml for the format")
    conn = data.get("connection")
    if isinstance(conn, dict) and "password" in conn:
        raise ConfigError(
            f"{path}: 'connection.password' is not accepted",
            "passwords never go in YAML: set key_file to an SSH private key instead",
        )
    try:
        return Target(**data, source=str(path))
    except ValidationError as exc:
        raise ConfigError(_validation_message(path, exc), "see targets/local.yaml for the format") from exc


def all_targets(folder: Path | None = None) -> dict[str, Target]:
    """Every target in ``folder`` (default: the shipped presets), by name."""
    folder = folder or targets_dir()
    return {t.name: t for t in (parse_target(p) for p in sorted(folder.glob("*.yaml")))}


def load_target(name_or_path: str | Path) -> Target:
    """Resolve a target by name, alias or YAML path.

    Raises:
        ConfigError: Unknown name (the message lists known ones) or an invalid file.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"target file {path} not found", "check the path")
        return parse_target(path)
    targets = all_targets()
    for target in targets.values():
        if name_or_path == target.name or name_or_path in target.aliases:
            return target
    known = ", ".join(sorted(targets))
    raise ConfigError(f"unknown target '{name_or_path}'", f"known targets: {known} (or give a YAML path)")
