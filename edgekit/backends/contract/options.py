"""What a backend is asked to build: precision, I/O conventions, quantizer options, board limits.

Pydantic models, validated where they enter (target YAML, recipe, CLI) and recorded in ``artifact.json``;
re-exported by :mod:`edgekit.backends.contract.base`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from edgekit.data.preprocess import PreprocessSpec


class CalibrationRef(BaseModel):
    """Which calibration set an INT8 model was made from, and the preprocessing applied to its images.

    Attributes:
        name: Set name.
        version: Set version.
        sha256: The set's hash (over every image's sha256 and the manifest).
        spec: The model's preprocessing the images went through when the set was used.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    sha256: str = Field(min_length=64, max_length=64)
    spec: PreprocessSpec


class QuantizerOptions(BaseModel):
    """Base of every backend's own quantizer options (subclass per backend; unknown keys are errors).

    For a backend whose INT8 comes from a QDQ ONNX (``int8_source = "qdq"``) the options *describe*
    how ``edgekit.quantize`` made that file; for one that quantizes itself (``"calibration"``) they
    *drive* its quantizer. Either way ``artifact.json`` records them.

    Attributes:
        method: The calibration method (each backend lists its own in ``Backend.methods``).
    """

    model_config = ConfigDict(extra="forbid")

    method: str


class UnparsedQuantizer(QuantizerOptions):
    """A quantizer given as a plain dict, held until the backend parses it into its own model."""

    model_config = ConfigDict(extra="allow")


class MemoryLimits(BaseModel):
    """A board's hard budget (MCUs): what the artifact may take of its flash and RAM, and its core."""

    model_config = ConfigDict(extra="forbid")

    flash_kb: int | None = Field(None, ge=1)
    ram_kb: int | None = Field(None, ge=1)
    core: str | None = None


class BuildOptions(BaseModel):
    """What to build: precision, runtime options, the detector's I/O conventions and how INT8 is made.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (each backend lists what it supports).
        threads: Intra-op threads the runner uses; ``None`` = runtime default.
        head: Output layout, ``yolov5`` ``[1, N, 5+nc]`` or ``yolov8`` ``[1, 4+nc, N]``; ``None`` =
            detected from the output shape (an ambiguous shape is an error asking for it).
        num_classes: Classes in the output; ``None`` = read from a static output shape.
        class_names: Optional names, one per class.
        preprocess: How images become inputs; ``None`` = derived from the ONNX input shape.
        calibration: The calibration set an INT8 build used (set by ``Backend.build`` from ``calib``,
            or by the caller for a QDQ made elsewhere).
        quantizer: The backend's own :class:`QuantizerOptions` subclass (a dict is parsed by the
            backend: :meth:`Backend.validate_options`).
        limits: The board's flash and RAM budget (a backend that can size its artifact checks it
            before anything is written).
    """

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    threads: int | None = Field(None, ge=1, le=256)
    head: Literal["yolov5", "yolov8", "yolox"] | None = None
    num_classes: int | None = Field(None, ge=1)
    class_names: list[str] = Field(default_factory=list)
    preprocess: PreprocessSpec | None = None
    calibration: CalibrationRef | None = None
    quantizer: SerializeAsAny[QuantizerOptions] | None = None
    limits: MemoryLimits | None = None

    @field_validator("quantizer", mode="before")
    @classmethod
    def _hold_raw_quantizer(cls, value: Any) -> Any:
        # A dict is the backend's to read (Backend.validate_options parses it, unknown keys rejected).
        return UnparsedQuantizer.model_validate(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _names_match_classes(self) -> BuildOptions:
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names given for num_classes={self.num_classes}")
        return self
