"""The calibration set of a deploy: ``--calib`` (verified), or the default set made once from the dataset."""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import CalibrationError
from edgekit.stages.context import RunContext


def default_set_name(data: str | None, images: Path | None = None) -> str:
    """Name of the set a deploy makes from its dataset (or ``--images`` folder) without ``--calib``."""
    if images is not None:
        return f"{Path(images).name}-calib"
    return "shapes-hard" if not data else f"{Path(data).name}-calib"


def ensure_calibration_set(
    ctx: RunContext, calib: str | None, data: str | None, root: Path, images: Path | None = None
):
    """Load ``calib`` or the dataset's default set (importing it the first time); verify it.

    The set holds images; the model's preprocessing (``ctx.spec``) is applied when it is used, so a
    set made for one input size serves every model.

    Raises:
        CalibrationError: The named set does not exist, or any set fails verification.
    """
    from edgekit.calib import CalibrationSet, import_set

    if calib:
        return CalibrationSet.load(calib, root=ctx.calib_root).verify()
    name = default_set_name(data, images)
    try:
        return CalibrationSet.load(name, root=ctx.calib_root).verify()
    except CalibrationError:
        if (Path(ctx.calib_root) / name).exists():
            raise  # it exists but is damaged: say so, never re-import over it silently
    if images is not None:  # the unlabelled folder: a random 128 of its images (all, if it has fewer)
        from edgekit.data.unlabelled import folder_splits

        train, held = folder_splits(images)
        count = min(128, len(train) + len(held))
        made = import_set(
            images, name, root=ctx.calib_root, from_dataset=False, count=count, spec=ctx.spec,
            progress=ctx.progress,
        )  # fmt: skip
        return made.set.verify()
    has_calib = (Path(root) / "images" / "calib").is_dir()
    split, count = ("calib", None) if has_calib else ("train", 128)
    made = import_set(
        root,
        name,
        root=ctx.calib_root,
        from_dataset=True,
        split=split,
        count=count,
        strategy="stratified",
        spec=ctx.spec,
        progress=ctx.progress,
    )
    return made.set.verify()
