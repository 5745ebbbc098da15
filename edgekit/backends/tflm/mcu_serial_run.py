"""MCU runner: drives a microcontroller on this computer's serial port (the board's companion SBC).

The SSH agent runs this file on the computer the MCU is plugged into, exactly like any runner (same command
line, same one JSON line on stdout): it quantizes each float input with the model's input scale and zero
point, sends it over serial, reads the board's int8 outputs and DWT cycle count, dequantizes and decodes
the raw maps (``detcore.decode_raw``) on this side. Stdlib + numpy only (termios, no pyserial).

Wire protocol (little-endian; the firmware side is ~40 lines around ``interpreter.Invoke()``):

    host  -> board  b"EKH?"                                   hello
    board -> host   b"EKH1" u32 n, n bytes of JSON            {"model_sha256", "core_hz", "arena_bytes"}
    host  -> board  b"EKI1" u32 n, n bytes                    one int8 input, the model's layout
    board -> host   b"EKO1" u32 cycles, u32 n, n bytes, u32 crc32(output bytes)
                                                              the outputs concatenated in model order,
                                                              cycles from DWT->CYCCNT around Invoke()

``latencies_ms`` are host round trips (serial transfer included); ``device_latency_ms`` are the board's
own cycles / core clock (a 32-bit CYCCNT wraps after 2^32 cycles: 8.9 s at 480 MHz, far above one
inference). A board that stops answering is an error after ``--timeout`` seconds, never a number.

Usage:
    python mcu_serial_run.py --artifact DIR --port /dev/ttyACM0 [--baud 921600] [--timeout 5] \
        [--iterations 100] [--min-seconds 10] [--eval-inputs E.npy --eval-out O.npz]
"""

from __future__ import annotations

import json
import os
import select
import struct
import sys
import termios
import time
import tty
import zlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# On a board the shared cores (runcore.py, detcore.py) are pushed beside this file; in a checkout they are
# in edgekit/runners/.
sys.path[:0] = [str(_HERE)] + (
    [] if (_HERE / "runcore.py").is_file() else [str(_HERE.parents[1] / "runners")]
)

import numpy as np  # noqa: E402
import runcore  # noqa: E402

HELLO, HELLO_REPLY, INPUT, OUTPUT = b"EKH?", b"EKH1", b"EKI1", b"EKO1"
BAUDS = {115200: termios.B115200, 230400: termios.B230400, 460800: termios.B460800, 921600: termios.B921600}
SERIAL = {"port": None, "baud": 921600, "timeout": 5.0}


def take_serial_args(argv: list[str]) -> list[str]:
    """Remove ``--port/--baud/--timeout`` from ``argv`` into :data:`SERIAL`; return the rest."""
    rest, i = [], 0
    while i < len(argv):
        key = argv[i].removeprefix("--")
        if key in SERIAL and i + 1 < len(argv):
            SERIAL[key] = argv[i + 1]
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    return rest


class SerialLink:
    """A raw serial port (a real UART or a pty), with reads bounded by a timeout."""

    def __init__(self, port: str, baud: int, timeout: float) -> None:
        try:
            self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            raise runcore.RunnerError(f"cannot open serial port {port}: {exc.strerror}") from exc
        self.timeout = timeout
        if os.isatty(self.fd):
            tty.setraw(self.fd)
            attrs = termios.tcgetattr(self.fd)
            speed = BAUDS.get(baud)
            if speed is None:
                raise runcore.RunnerError(f"unsupported baud rate {baud}; use one of {sorted(BAUDS)}")
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def write(self, data: bytes) -> None:
        """Write everything."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def read(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes or fail after the timeout naming what was awaited."""
        out = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise runcore.RunnerError(
                    f"the board stopped answering: no {what} within {self.timeout:g} s "
                    f"({len(out)} of {n} bytes); check the cable, the baud rate and that the firmware runs"
                )
            chunk = os.read(self.fd, n - len(out))
            if not chunk:
                raise runcore.RunnerError(f"the serial port closed while waiting for {what}")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        """Close the port."""
        os.close(self.fd)


class SerialBoard:
    """The MCU as a runtime: quantize, send, receive, check, dequantize, decode."""

    name = "tflm-serial"
    backend = "tflm"

    def __init__(self, meta: dict, folder: str, threads: int | None) -> None:
        if not SERIAL["port"]:
            raise runcore.RunnerError("--port is required (the MCU's serial device, e.g. /dev/ttyACM0)")
        self.meta, self.tflm = meta, meta["tflm"]
        self.link = SerialLink(str(SERIAL["port"]), int(SERIAL["baud"]), float(SERIAL["timeout"]))
        self.board = self._hello(meta)
        self.core_hz = float(self.board["core_hz"])
        self.version = f"firmware {self.board.get('firmware', 'unknown')} on {SERIAL['port']}"
        self.threads = 1
        self.device_ms: list[float] = []
        from tflm_run import tflite_outputs

        self.outputs = tflite_outputs(self.tflm)  # the order the firmware sends them in
        self.sizes = [int(np.prod(o["shape"])) for o in self.outputs]

    def _hello(self, meta: dict) -> dict:
        self.link.write(HELLO)
        if self.link.read(4, "hello reply") != HELLO_REPLY:
            raise runcore.RunnerError(
                "the board answered the hello with something else (not edgekit firmware?)"
            )
        (n,) = struct.unpack("<I", self.link.read(4, "hello length"))
        info = json.loads(self.link.read(n, "hello body"))
        model = meta["sha256"][meta["files"]["model"]]
        if info.get("model_sha256") != model:
            raise runcore.RunnerError(
                f"the board runs model {str(info.get('model_sha256'))[:12]}, this artifact is {model[:12]}: "
                "flash the artifact's firmware bundle first"
            )
        return info

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One input through the board; float ``yolov5`` rows decoded from its raw maps."""
        import detcore
        from tflm_run import assemble, quantize

        spec = self.tflm["input"]
        xs = x.transpose(0, 2, 3, 1) if spec["layout"] == "NHWC" and x.ndim == 4 else x
        q = quantize(
            np.ascontiguousarray(xs, dtype=np.float32), spec["scale"], spec["zero_point"], spec["dtype"]
        )
        payload = q.tobytes()
        self.link.write(INPUT + struct.pack("<I", len(payload)) + payload)
        if self.link.read(4, "output header") != OUTPUT:
            raise runcore.RunnerError("the board's reply is out of step (wrong header)")
        cycles, n = struct.unpack("<II", self.link.read(8, "cycle count"))
        if n != sum(self.sizes):
            raise runcore.RunnerError(f"the board sent {n} output bytes, the model has {sum(self.sizes)}")
        body = self.link.read(n, "outputs")
        (crc,) = struct.unpack("<I", self.link.read(4, "checksum"))
        if zlib.crc32(body) != crc:
            raise runcore.RunnerError("output checksum mismatch: the serial link corrupted a reply")
        self.device_ms.append(cycles / self.core_hz * 1e3)
        raws, offset = {}, 0
        for out, size in zip(self.outputs, self.sizes, strict=True):
            raws[int(out["index"])] = np.frombuffer(body[offset : offset + size], dtype=np.int8).reshape(
                out["shape"]
            )
            offset += size
        maps = assemble(self.tflm, raws.__getitem__)
        return detcore.decode_raw(maps, self.tflm["decode"], layout=self.tflm["outputs"][0]["layout"])

    def report(self) -> dict:
        """The board's own figures, merged into the runner's JSON line."""
        return {
            "device_latency_ms": [round(v, 4) for v in self.device_ms],
            "board": {k: v for k, v in self.board.items() if k != "model_sha256"},
            "link": {"port": SERIAL["port"], "baud": int(SERIAL["baud"])},
        }


if __name__ == "__main__":
    sys.argv[1:] = take_serial_args(sys.argv[1:])
    runcore.main(SerialBoard, "mcu_serial_run")
