"""TEST DOUBLE of an MCU running edgekit's firmware bundle, on the far side of a pty pair.

It speaks the serial protocol of ``edgekit/runners/mcu_serial_run.py`` and computes with the
``tflite-micro`` interpreter (the reference kernels the firmware runs). Its "cycles" are host time x the
stated core clock: they test the plumbing, never a board's speed. ``--answers N`` stops answering after N
inferences (a board that hangs mid-run).

Usage: python mcu_board.py --fd FD --artifact DIR [--core-hz 480e6] [--answers N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np


def read(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            sys.exit(0)
        out += chunk
    return bytes(out)


def write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--artifact", required=True)
    p.add_argument("--core-hz", type=float, default=480e6)
    p.add_argument("--answers", type=int, default=-1)
    args = p.parse_args()
    from tflite_micro import runtime

    meta = json.loads((Path(args.artifact) / "artifact.json").read_text())
    model = Path(args.artifact) / meta["files"]["model"]
    tflm = meta["tflm"]
    it = runtime.Interpreter.from_file(str(model), arena_size=int(tflm["host_arena_bytes"]))
    shape = tflm["input"]["shape"]
    order = sorted(int(p["index"]) for o in tflm["outputs"] for p in o.get("parts", [o]))
    hello = {"model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "core_hz": args.core_hz,
             "arena_bytes": tflm["arena"]["firmware_bytes"], "firmware": "fake-1"}  # fmt: skip
    answered = 0
    while True:
        tag = read(args.fd, 4)
        if tag == b"EKH?":
            body = json.dumps(hello).encode()
            write(args.fd, b"EKH1" + struct.pack("<I", len(body)) + body)
        elif tag == b"EKI1":
            (n,) = struct.unpack("<I", read(args.fd, 4))
            x = np.frombuffer(read(args.fd, n), dtype=np.int8).reshape(shape)
            if answered == args.answers:
                time.sleep(3600)  # hung: never answers again
            t = time.perf_counter()
            it.set_input(x, 0)
            it.invoke()
            cycles = int((time.perf_counter() - t) * args.core_hz) & 0xFFFFFFFF
            body = b"".join(it.get_output(i).astype(np.int8).tobytes() for i in order)  # model order
            crc = struct.pack("<I", zlib.crc32(body))
            write(args.fd, b"EKO1" + struct.pack("<II", cycles, len(body)) + body + crc)
            answered += 1
        else:
            sys.exit(f"fake board: unknown tag {tag!r}")


if __name__ == "__main__":
    sys.exit(main())
