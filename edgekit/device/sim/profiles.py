"""The boards edgekit can emulate and the ARM CPU each one is.

Each profile names a qemu CPU model and what a Linux kernel on that core reports in ``/proc/cpuinfo``
(the MIDR fields and the hwcap feature names). The features are those qemu 7.2 gives each model (measured:
``../shared/research/arm-emulation.md``): a Cortex-A72 has plain NEON, no dot-product and no fp16
arithmetic; a Cortex-A76 adds ``asimddp`` (sdot/udot) and ``fphp``/``asimdhp`` (fp16). The runtimes' int8
and fp16 kernel paths follow them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgekit.core.errors import ConfigError


@dataclass(frozen=True)
class BoardProfile:
    """One emulated board.

    Attributes:
        name: Short name (``--board`` value).
        boards: The ``board:`` values of targets this simulator stands for.
        cpu: qemu ``-cpu`` model.
        part: MIDR part number of that core (ARM's implementer 0x41).
        features: Linux hwcap names of that core, as ``/proc/cpuinfo`` lists them.
        cores: Cores the real board has (its cpuinfo lists the host's: what the emulator runs on).
        subnet: Third octet of the board's address (10.251.<subnet>.2).
    """

    name: str
    boards: tuple[str, ...]
    cpu: str
    part: int
    features: tuple[str, ...]
    cores: int
    subnet: int

    @property
    def address(self) -> str:
        """The board's address in its network namespace."""
        return f"10.251.{self.subnet}.2"

    @property
    def host_address(self) -> str:
        """The host's end of the link to the board."""
        return f"10.251.{self.subnet}.1"

    def cpuinfo(self) -> str:
        """An ARM ``/proc/cpuinfo`` for this core, as an arm64 Linux kernel writes it.

        >>> "asimddp" in PROFILES["rk3588"].cpuinfo(), "asimddp" in PROFILES["rpi4"].cpuinfo()
        (True, False)
        """
        block = (
            "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            "CPU architecture: 8\nCPU variant\t: 0x{variant:x}\nCPU part\t: 0x{part:03x}\nCPU revision\t: 0\n"
        )
        variant = 4 if self.cpu == "cortex-a76" else 0
        return "\n".join(
            block.format(n=n, features=" ".join(self.features), variant=variant, part=self.part)
            for n in range(os.cpu_count() or 1)  # the cores the emulator really has (as sysfs says)
        )

    def int8_path(self) -> str:
        """Which int8 kernels this core runs (what the record says)."""
        return "sdot (dot-product)" if "asimddp" in self.features else "NEON (no dot-product)"

    def fp16_arithmetic(self) -> bool:
        """True when the core computes in fp16 (the ARM runtimes' default then)."""
        return "asimdhp" in self.features


_A72 = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid")
_A76 = (*_A72[:-1], "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp")

PROFILES: dict[str, BoardProfile] = {
    "rpi4": BoardProfile("rpi4", ("raspberry-pi-4",), "cortex-a72", 0xD08, _A72, 4, 4),
    "rk3588": BoardProfile("rk3588", ("rk3588",), "cortex-a76", 0xD0B, _A76, 4, 88),
}


def profile(name: str) -> BoardProfile:
    """The profile named ``name`` (a ``--board`` value or a target's ``board:``).

    Raises:
        ConfigError: No simulator stands for that board.
    """
    for p in PROFILES.values():
        if name == p.name or name in p.boards:
            return p
    known = ", ".join(PROFILES)
    raise ConfigError(
        f"no board simulator for {name!r}: edgekit emulates {known}",
        hint=f"use --board with one of: {known}",
    )
