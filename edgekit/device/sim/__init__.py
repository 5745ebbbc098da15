"""Emulated ARM boards: an arm64 Debian root file system run under qemu-user as a Cortex-A72 or -A76.

:mod:`.profiles` says what each simulated board is, :mod:`.rootfs` builds the root file system and the
board's Python environment from Debian and PyPI (cached outside the clone), :mod:`.board` starts one as an
SSH peer with its own network and process namespaces and stops it.
"""
