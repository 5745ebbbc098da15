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
