"""MNN's calibration files: ``mnn_quant.json`` for ``quantized.out`` over the exported images."""

from __future__ import annotations

from edgekit.calib.exporters import ExportContext, tool_mean_norm
from edgekit.core.errors import ConfigError
from edgekit.core.files import atomic_write_json

FORMAT = "mnn"
#: The ``write`` parameter ``edgekit calib export --method`` sets.
METHOD_OPTION = "feature_method"
#: What `--method` takes.
METHODS = ("EMA", "KL")


def write(
    ctx: ExportContext,
    feature_method: str = "EMA",
    weight_method: str = "MAX_ABS",
    batch_size: int | None = None,
) -> dict:
    """``mnn_quant.json``: MNN's pixel format, mean/normal on 0..255 pixels, size, image folder, methods."""
    feature, weight = feature_method.upper(), weight_method.upper()
    if feature == "ADMM":
        raise ConfigError(
            "MNN's ADMM feature quantizer is refused: in MNN 3.6.1 it segfaults after 'Quantize model done!' "
            "and the model outputs all zeros",
            "use feature_method EMA (default, most accurate here) or KL",
        )
    if feature not in ("EMA", "KL") or weight not in ("MAX_ABS", "ADMM"):
        raise ConfigError(
            f"bad MNN quantizer methods feature={feature_method!r} weight={weight_method!r}",
            "feature_method: EMA or KL; weight_method: MAX_ABS or ADMM",
        )
    mean, norm = tool_mean_norm(ctx.cs.spec)
    size = ctx.cs.spec.input_size
    cfg = {
        "format": ctx.cs.spec.channel_order,
        "mean": mean,
        "normal": norm,
        "width": size,
        "height": size,
        "path": str(ctx.final / "images") + "/",
        "used_image_num": len(ctx.image_files),
        "feature_quantize_method": feature,
        "weight_quantize_method": weight,
    }
    if batch_size is not None and feature == "EMA":
        cfg["batch_size"] = int(batch_size)
    atomic_write_json(ctx.tmp / "mnn_quant.json", cfg)
    return {"files": ["mnn_quant.json"], "options": {"feature_method": feature, "weight_method": weight}}
