"""``edgekit board``: emulated ARM boards (``edgekit board sim ...``)."""

from __future__ import annotations

import argparse
import json

from edgekit.device.sim.profiles import PROFILES

EPILOG = """\
examples:
  edgekit board sim start --board rpi4      # a Raspberry Pi 4 (Cortex-A72) emulated, over SSH at 10.251.4.2
  edgekit board sim start --board rk3588    # an RK3588 (Cortex-A76: dot-product, fp16) at 10.251.88.2
  edgekit board sim status                  # which simulators run, and how to reach them
  edgekit board sim stop --board all        # stop them, leaving nothing running

The first start builds an arm64 Debian root file system with the board's Python, ONNX Runtime, ncnn and MNN
at this host's versions (about 6 minutes; cached in $EDGEKIT_SIM_HOME or ~/.cache/edgekit/board-sim).
`edgekit deploy --target rpi4-ncnn --device sim` starts the target's simulator itself. Emulated time is not
board time: the report names it emulator time.
"""


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "board",
        help="emulated ARM boards over SSH (board sim start|stop|status)",
        description="Emulated ARM boards: real ARM kernels of the runtimes, under qemu, reached over SSH.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    board_sub = p.add_subparsers(dest="board_command", metavar="ACTION")
    sim = board_sub.add_parser(
        "sim",
        help="start, stop or list the board simulators",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("action", choices=["start", "stop", "status", "build"], help="what to do")
    sim.add_argument(
        "--board",
        default="all",
        choices=[*PROFILES, "all"],
        help="which simulator: " + ", ".join(f"{n} ({p.cpu})" for n, p in PROFILES.items()) + "; default all",
    )
    sim.add_argument("--json", action="store_true", help="print the connection(s) as JSON")
    sim.set_defaults(func=cmd_sim)
    prep = board_sub.add_parser(
        "prepare",
        help="install on a board the runtime versions this host's converters write for",
        description="Install on the target's board (over SSH) the runtime this host's converter writes for, "
        "at this host's version, with numpy: wheels are fetched here for the board's platform and Python, "
        "pushed, and installed by the board's pip offline. A bench refuses a board whose runtime is missing "
        "or another version, and names this command.",
        epilog="examples:\n  edgekit board prepare rpi4-ncnn --device sim\n"
        "  edgekit board prepare rk3588-mnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("target", help="target name or YAML file (its connection: and backend: are used)")
    prep.add_argument(
        "--device", choices=["sim"], help="sim: the target's emulated board (started if needed)"
    )
    prep.set_defaults(func=cmd_prepare)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def cmd_sim(args) -> int:
    """Handle ``edgekit board sim``."""
    from edgekit.device.sim.board import BoardSim
    from edgekit.device.sim.rootfs import ensure_rootfs

    names = list(PROFILES) if args.board == "all" else [args.board]
    if args.action == "build":
        print(ensure_rootfs())
        return 0
    out = {}
    for name in names:
        sim = BoardSim(name)
        if args.action == "start":
            out[name] = vars(sim.start())
        elif args.action == "stop":
            print(f"{name}: {'stopped' if sim.stop() else 'was not running'}")
        else:
            out[name] = vars(sim.connection()) if sim.running() else None
    if args.action == "stop":
        return 0
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for name, conn in out.items():
        if conn is None:
            print(f"{name}: not running (edgekit board sim start --board {name})")
        else:
            print(
                f"{name}: {conn['cpu']} at {conn['user']}@{conn['host']} "
                f"(ssh -i {conn['key_file']} -o UserKnownHostsFile={conn['known_hosts']} "
                f"{conn['user']}@{conn['host']})"
            )
    return 0


def cmd_prepare(args) -> int:
    """Handle ``edgekit board prepare``."""
    from edgekit.core.config import load_target
    from edgekit.core.errors import ConfigError
    from edgekit.core.registry import BACKENDS
    from edgekit.device.provision import prepare_board
    from edgekit.device.sim.rootfs import sim_home
    from edgekit.device.ssh import SSHTransport

    target = load_target(args.target)
    if args.device == "sim":
        from edgekit.device.sim.board import BoardSim
        from edgekit.device.sim.target import sim_target

        target = sim_target(target)
        BoardSim(target.board).start()
    if target.connection.type != "ssh":
        raise ConfigError(
            f"target '{target.name}' runs on this host: its runtime is the one edgekit installed here",
            "give a target whose connection is ssh, or --device sim for an emulated board",
        )
    packages = BACKENDS.get(target.backend).board_packages
    if not packages:
        print(f"{target.backend}: nothing a board gets from pip (it is built or flashed on the device)")
        return 0
    with SSHTransport.from_connection(target.connection) as transport:
        prepare_board(transport, target.connection.python, packages, sim_home().parent / "board-wheels")
    return 0
