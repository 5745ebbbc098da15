"""ncnn's calibration files: an image list and the ``ncnn2table`` arguments that match the set's spec."""

from __future__ import annotations

from edgekit.calib.exporters import ExportContext, tool_mean_norm
from edgekit.core.errors import ConfigError
from edgekit.core.files import atomic_write_text

FORMAT = "ncnn"
#: The ``write`` parameter ``edgekit calib export --method`` sets.
METHOD_OPTION = "method"
#: What `--method` takes.
METHODS = ("kl", "aciq")


def write(ctx: ExportContext, method: str = "kl", thread: int = 2) -> dict:
    """``imagelist.txt`` (absolute paths) and ``ncnn2table.args`` (mean, norm, shape, pixel, method)."""
    if method not in ("kl", "aciq"):
        raise ConfigError(
            f"bad ncnn2table method {method!r}", "use kl or aciq (method=eq segfaults in ncnn2table)"
        )
    mean, norm = tool_mean_norm(ctx.cs.spec)
    size = ctx.cs.spec.input_size
    listing = "".join(f"{ctx.final / f}\n" for f in ctx.image_files)
    atomic_write_text(ctx.tmp / "imagelist.txt", listing)
    args = (
        f"mean=[{_floats(mean)}] norm=[{_floats(norm)}] shape=[{size},{size},3] "
        f"pixel={ctx.cs.spec.channel_order} thread={int(thread)} method={method}"
    )
    atomic_write_text(ctx.tmp / "ncnn2table.args", args + "\n")
    usage = f"ncnn2table MODEL.param MODEL.bin {ctx.final / 'imagelist.txt'} MODEL.table {args}"
    return {"files": ["imagelist.txt", "ncnn2table.args"], "usage": usage}


def _floats(values: list[float]) -> str:
    return ",".join(f"{v:.9g}" for v in values)
