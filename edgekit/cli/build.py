"""``edgekit build``: one artifact from an ONNX model, judged by its detections against FP32."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.cli.types import CALIBRATORS, positive_int


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser(
        "build",
        help="build one artifact (+ artifact.json) from an ONNX model",
        description=(
            "Build one artifact for a runtime. INT8 is judged by its detections: the artifact's decoded,\n"
            "NMS'd detections on the check images (the calibration images) must keep >= 95 % of FP32's\n"
            "with a mean score error <= 0.05, or the build is refused and nothing is written."
        ),
        epilog="examples:\n"
        "  edgekit build --backend onnxruntime --precision int8 --onnx yolov8n.onnx --calib street "
        "--out build/m\n"
        "  edgekit build -b ncnn -p int8 --onnx yolov8n.onnx --calib street --calibrator auto --out build/n\n"
        "  edgekit build -b onnxruntime -p int8 --onnx yolox.onnx --head yolox --std 0.00392157 "
        "--channel-order BGR --calib street --out build/x   # YOLOX: raw rows, 0..255 BGR input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", "-b", required=True, help="backend name (see `edgekit doctor`)")
    p.add_argument("--precision", "-p", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--onnx", required=True, type=Path, help="FP32 ONNX (int8: a QDQ ONNX, or give --calib)")
    p.add_argument("--calib", help="calibration set to quantize an FP32 ONNX for int8")
    p.add_argument("--calib-root", default="calibration", type=Path)
    p.add_argument(
        "--calibrator",
        "--method",
        dest="method",
        default="default",
        choices=CALIBRATORS,
        help="int8 calibration method of the backend. default: its methods in order, the first whose "
        "detections match FP32's on the check images; auto: every method, the one keeping the most "
        "detections (refused past --max-drop); or one method by name",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=5.0,
        metavar="PT",
        help="for --calibrator auto: percentage points of FP32's detections the INT8 model may lose "
        "on the check images (default: 5)",
    )
    p.add_argument(
        "--head", choices=["yolov5", "yolov8", "yolox"], help="output layout (default: read from the model)"
    )
    p.add_argument(
        "--mean",
        type=_triple,
        help="per-channel mean on 0..1 (default 0,0,0: Ultralytics' pixels / 255)",
    )
    p.add_argument(
        "--std",
        type=_triple,
        help="per-channel std on 0..1; 0.00392157 feeds 0..255 pixels (YOLOX's own exports)",
    )
    p.add_argument(
        "--channel-order", choices=["RGB", "BGR"], help="channel order the model takes (default RGB)"
    )
    p.add_argument("--threads", type=positive_int)
    p.add_argument(
        "--check-on",
        choices=["rpi4", "rk3588"],
        help="run the build's checks on an emulated ARM board (started if needed) with its runtime's own "
        "kernels, where the backend can (MNN: its x86 INT8 kernels are not repeatable on C2f detectors)",
    )
    p.add_argument("--out", required=True, type=Path, help="artifact folder to create")
    p.set_defaults(func=cmd_build)


def _triple(text: str) -> tuple[float, float, float]:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` -> three floats (argparse type)."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give one value or three, comma-separated")
    return (parts[0], parts[1], parts[2])


def cmd_build(args) -> int:
    """Handle ``edgekit build``."""
    from edgekit.build import build_artifact

    artifact = build_artifact(
        args.backend,
        args.precision,
        args.onnx,
        args.out,
        calib=args.calib,
        calib_root=args.calib_root,
        method=args.method,
        head=args.head,
        threads=args.threads,
        max_drop=args.max_drop,
        check_on=args.check_on,
        preprocess={
            k: v
            for k, v in (("mean", args.mean), ("std", args.std), ("channel_order", args.channel_order))
            if v is not None
        },
    )
    _print_agreement(artifact)
    print(f"built {artifact.dir} ({', '.join(sorted(artifact.meta.get('sha256', {})))})")
    return 0


def _print_agreement(artifact) -> None:
    """One line on how the artifact's detections compare with FP32's (the build's check)."""
    figures = (artifact.meta.get("parity") or {}).get("detections")
    search = artifact.meta.get("calibration_search") or []
    for tried in search[:-1] if len(search) > 1 else []:
        if "error" in tried:
            print(f"calibrator {tried['method']}: refused ({tried['error']})")
    if figures and figures.get("kept") is not None:
        print(
            f"agreement with FP32 on {figures['images']} check images: {figures['kept']:.1%} of "
            f"{figures['detections']} detections kept, mean score error {figures['score_error']}, "
            f"box IoU {figures['box_iou']}"
        )
