"""``edgekit calib ...``: import, list, show, verify, diff and export calibration sets.

The main CLI calls :func:`add_parser` and dispatches to ``args.func(args)``; handlers return an exit code
and raise :class:`~edgekit.core.errors.EdgekitError` on bad input (the main CLI prints ``error:``/``hint:``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgekit.calib.calibration_set import CalibrationSet, parse_ref
from edgekit.calib.manifest import MANIFEST, list_versions, read_manifest
from edgekit.cli.types import non_negative_int, positive_int
from edgekit.core.errors import ConfigError
from edgekit.data.preprocess import PreprocessSpec

_MAX_WARNINGS_SHOWN = 10

_EPILOG = """examples:
  edgekit calib import data/shapes --from-dataset --split calib --name shapes --count 64 --strategy stratified
  edgekit calib import ~/photos/site-a --name site-a --input-size 320
  edgekit calib list
  edgekit calib show shapes@v2 --sheet shapes.png
  edgekit calib verify shapes
  edgekit calib diff shapes@v1 shapes@v2
  edgekit calib export shapes --format tensorrt --onnx model.onnx --out build/trt-calib

A set lives in calibration/<name>/ (manifest.json, images/, labels/, versions/v<k>.json). Re-importing
changed content or preprocessing writes a new version; older versions stay loadable as NAME@v<k>."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calib`` and its subcommands on the main CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "calib",
        help="manage calibration sets (import, list, show, verify, diff, export)",
        description="Versioned, hashed calibration image sets, exported to every quantizer.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="calib_command", required=True, metavar="COMMAND")
    _add_import(sub, fmt)
    lst = sub.add_parser("list", help="list the sets under --root", formatter_class=fmt)
    _root(lst).set_defaults(func=cmd_list)
    show = sub.add_parser(
        "show",
        help="what a set holds (sizes, channel stats, classes)",
        formatter_class=fmt,
        epilog="example: edgekit calib show shapes@v1 --sheet sheet.png",
    )
    show.add_argument("set", metavar="NAME[@vK]")
    show.add_argument("--sheet", type=Path, metavar="PNG", help="also write a contact sheet of the inputs")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    _root(show).set_defaults(func=cmd_show)
    ver = sub.add_parser(
        "verify", help="re-hash every file; non-zero exit on any mismatch", formatter_class=fmt
    )
    ver.add_argument("set", metavar="NAME[@vK]")
    _root(ver).set_defaults(func=cmd_verify)
    dif = sub.add_parser(
        "diff",
        help="images added/removed and spec changes between two versions",
        epilog="example: edgekit calib diff shapes@v1 shapes@v2",
        formatter_class=fmt,
    )
    dif.add_argument("a", metavar="NAME@vA")
    dif.add_argument("b", metavar="NAME@vB")
    _root(dif).set_defaults(func=cmd_diff)
    _add_export(sub, fmt)
    return p


def _root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--root", "--calib-root", dest="root", type=Path, default=Path("calibration"),
        help="folder holding the sets (--calib-root, as deploy and build name it, is the same)",
    )  # fmt: skip
    return p


def _add_import(sub: argparse._SubParsersAction, fmt: type) -> None:
    p = sub.add_parser(
        "import",
        help="create or update a set from a folder, YOLO dataset or list file",
        formatter_class=fmt,
        epilog="examples:\n  edgekit calib import imgs/ --name site-a --count 200 --seed 1\n"
        "  edgekit calib import data/coco8 --from-dataset --split val --name coco8 --strategy stratified\n"
        "  edgekit calib import picks.txt --name picks   (one path per line, relative to the file)",
    )
    p.add_argument("src", type=Path, help="image folder, YOLO dataset folder (has data.yaml) or list file")
    p.add_argument("--name", required=True, help="set name (folder under --root)")
    p.add_argument("--from-dataset", action="store_true", default=None, help="read SRC as a YOLO dataset")
    p.add_argument("--split", default="calib", help="dataset split (default: calib)")
    p.add_argument("--count", type=positive_int, help="number of images to keep (default: all)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default: 0)")
    p.add_argument(
        "--strategy",
        choices=["random", "stratified"],
        default="random",
        help="stratified balances classes and box sizes (needs labels)",
    )
    p.add_argument(
        "--input-size", type=positive_int, default=PreprocessSpec().input_size, help="network input side"
    )
    p.add_argument("--resize", choices=["letterbox", "stretch"], default="letterbox")
    p.add_argument(
        "--mean",
        type=_triple,
        default=(0.0, 0.0, 0.0),
        help="per-channel mean on 0..1, e.g. 0.485,0.456,0.406",
    )
    p.add_argument("--std", type=_triple, default=(1.0, 1.0, 1.0), help="per-channel std on 0..1")
    p.add_argument("--channel-order", choices=["RGB", "BGR"], default="RGB")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    p.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out (recorded) instead of failing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _root(p).set_defaults(func=cmd_import)


def _add_export(sub: argparse._SubParsersAction, fmt: type) -> None:
    from edgekit.calib.exporters import formats

    found = formats()
    p = sub.add_parser(
        "export",
        help=f"write a set in the calibration files of a runtime's own tools ({', '.join(found)})",
        formatter_class=fmt,
        epilog="examples:\n  edgekit calib export shapes --format mnn --out build/mnn-calib\n"
        "  edgekit calib export shapes@v2 --format tensorrt --onnx m.onnx --out build/trt --trt-version 8.5.2",  # noqa: E501
    )
    p.add_argument("set", metavar="NAME[@vK]")
    p.add_argument("--format", required=True, choices=list(found), help="the runtime whose files to write")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist unless --force)")
    takes_onnx = [name for name, module in found.items() if "onnx" in _write_parameters(module)]
    p.add_argument(
        "--onnx", type=Path, help=f"fp32 ONNX model ({', '.join(takes_onnx)}: activation ranges come from it)"
    )
    p.add_argument("--limit", type=positive_int, help="export only the first N images")
    methods = [f"{name}: {'|'.join(m.METHODS)}" for name, m in found.items() if getattr(m, "METHODS", ())]
    p.add_argument("--method", help="; ".join(methods))
    for name, module in found.items():
        for flag, dest, text in getattr(module, "CLI_OPTIONS", ()):
            p.add_argument(
                flag,
                dest=f"format_{dest}",
                metavar=dest.upper(),
                default=None,
                help=f"--format {name}: {text}",
            )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    _root(p).set_defaults(func=cmd_export)


def _write_parameters(module) -> list[str]:
    import inspect

    return [n for n in inspect.signature(module.write).parameters if n != "ctx"]


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


# --- handlers -------------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    """``edgekit calib import``."""
    from edgekit.calib.importer import import_set

    spec = _spec_from_args(args)
    result = import_set(
        args.src,
        args.name,
        root=args.root,
        from_dataset=args.from_dataset,
        split=args.split,
        count=args.count,
        seed=args.seed,
        strategy=args.strategy,
        spec=spec,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    con = _console()
    con.print(result.summary())
    _print_warnings(con, result.warnings)
    return 0


def _spec_from_args(args: argparse.Namespace) -> PreprocessSpec:
    from pydantic import ValidationError

    fields = ("input_size", "resize", "mean", "std", "channel_order", "layout")
    try:
        return PreprocessSpec(**{f: getattr(args, f) for f in fields})
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"bad {flag}: {first['msg']}", "see `edgekit calib import --help`") from exc


def _print_warnings(con: Console, notes: list[str]) -> None:
    for note in notes[:_MAX_WARNINGS_SHOWN]:
        con.print(f"[yellow]warning:[/] {note}", markup=True)
    if len(notes) > _MAX_WARNINGS_SHOWN:
        con.print(f"... {len(notes) - _MAX_WARNINGS_SHOWN} more warnings in the manifest")


def cmd_list(args: argparse.Namespace) -> int:
    """``edgekit calib list``."""
    table = Table(title=f"calibration sets in {args.root}/")
    for col in ("name", "version", "versions", "count", "size on disk", "sha256"):
        table.add_column(col, justify="right" if col in ("count", "size on disk") else "left")
    manifests = sorted(Path(args.root).glob(f"*/{MANIFEST}")) if Path(args.root).is_dir() else []
    for path in manifests:
        m = read_manifest(path)
        versions = list_versions(path.parent)
        size = sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file())
        table.add_row(m.name, f"v{m.version}", str(len(versions)), str(m.count), _human(size), m.sha256[:12])
    con = _console()
    if not manifests:
        con.print(
            f"no calibration sets in {args.root}/ (create one with `edgekit calib import SRC --name N`)"
        )
        return 0
    con.print(table)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_show(args: argparse.Namespace) -> int:
    """``edgekit calib show``."""
    from edgekit.calib.stats import contact_sheet, show

    cs = CalibrationSet.load(args.set, root=args.root)
    info = show(cs)
    con = _console()
    if args.json:
        con.print_json(json.dumps(info))
    else:
        _print_summary(con, info)
    if args.sheet:
        con.print(f"contact sheet: {contact_sheet(cs, args.sheet)}")
    return 0


def _print_summary(con: Console, info: dict) -> None:
    src = info["source"]
    con.print(f"{info['name']} v{info['version']}  sha256 {info['sha256']}  (versions: {info['versions']})")
    con.print(
        f"  created {info['created']} from {src['kind']} {src['path']} "
        f"({src['strategy']}, seed {src['seed']})"
    )
    con.print(
        f"  {info['count']} images, {_human(info['bytes'])}; width {_span(info['width'])}, "
        f"height {_span(info['height'])}"
    )
    spec = info["spec"]
    con.print(
        f"  preprocess: {spec['input_size']}px {spec['resize']} {spec['channel_order']} {spec['layout']} "
        f"mean {spec['mean']} std {spec['std']}"
    )
    con.print(f"  input tensor per-channel mean {info['channel_mean']} std {info['channel_std']}")
    if "labels" in info:
        lab = info["labels"]
        con.print(f"  boxes per class: {lab['boxes_per_class']}")
        con.print(
            f"  images per class: {lab['images_per_class']} (+{lab['background_images']} without boxes)"
        )
        con.print(f"  box sizes (input px, COCO 32²/96²): {lab['box_sizes']}")
    _print_warnings(con, info["warnings"])


def _span(d: dict) -> str:
    return f"{d['min']}..{d['max']} (median {d['median']:g})"


def cmd_verify(args: argparse.Namespace) -> int:
    """``edgekit calib verify``: 0 when every file matches; raises CalibrationError otherwise."""
    cs = CalibrationSet.load(args.set, root=args.root).verify()
    _console().print(f"ok: {cs.name} v{cs.version}, {cs.count} images, sha256 {cs.sha256} verified")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """``edgekit calib diff``."""
    from edgekit.calib.stats import diff

    for ref in (args.a, args.b):
        parse_ref(ref)
    d = diff(CalibrationSet.load(args.a, root=args.root), CalibrationSet.load(args.b, root=args.root))
    con = _console()
    a, b = d["a"], d["b"]
    con.print(
        f"{a['name']} v{a['version']} -> {b['name']} v{b['version']}: "
        + ("identical content" if d["same"] else "different content")
    )
    con.print(f"  kept {d['kept']}, added {len(d['added'])}, removed {len(d['removed'])}")
    for e in d["added"]:
        con.print(f"  + {e['sha256'][:16]} {e['source_name']}")
    for e in d["removed"]:
        con.print(f"  - {e['sha256'][:16]} {e['source_name']}")
    for change in d["spec_changes"]:
        con.print(f"  spec {change}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``edgekit calib export``."""
    from edgekit.calib.exporters import exporter

    cs = CalibrationSet.load(args.set, root=args.root)
    module = exporter(args.format)
    options = _format_options(args, module)
    files = cs.export(args.format, args.out, limit=args.limit, overwrite=args.force, **options)
    con = _console()
    con.print(f"exported {cs.name} v{cs.version} for {args.format}: {len(files)} files in {args.out}")
    for note in getattr(module, "cli_notes", lambda kw: [])(options):
        con.print(f"note: {note}")
    return 0


def _format_options(args: argparse.Namespace, module) -> dict:
    """The format's ``write`` arguments from the command line; a flag of another format is an error."""
    from edgekit.calib.exporters import formats

    fmt, params = args.format, _write_parameters(module)
    if args.onnx is not None and "onnx" not in params:
        takes = [name for name, m in formats().items() if "onnx" in _write_parameters(m)]
        raise ConfigError(f"--onnx is only used by --format {' or '.join(takes)}, not {fmt}", "drop --onnx")
    own = {dest for _, dest, _ in getattr(module, "CLI_OPTIONS", ())}
    given = {k.removeprefix("format_"): v for k, v in vars(args).items() if k.startswith("format_") and v}
    foreign = sorted(set(given) - own)
    if foreign:
        flags = [
            f for m in formats().values() for f, dest, _ in getattr(m, "CLI_OPTIONS", ()) if dest in foreign
        ]
        raise ConfigError(f"{'/'.join(flags)} do not apply to --format {fmt}", "drop them")
    if hasattr(module, "cli_kwargs"):
        return module.cli_kwargs(args.method, args.onnx, given)
    kw: dict = {}
    if args.method:
        option = getattr(module, "METHOD_OPTION", None)
        if option is None:
            raise ConfigError(f"--method does not apply to --format {fmt}", "drop --method")
        kw[option] = args.method
    return kw
