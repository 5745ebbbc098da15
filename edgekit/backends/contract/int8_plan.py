"""How one INT8 artifact is made, decided once; ``edgekit deploy``, ``build`` and ``--dry-run`` read it.

The decision follows from the backend's declared attributes (``int8_source``, ``methods``,
``build_location``, ``fallback``), the recipe (QAT or PTQ) and the ``--calibrator`` asked for:

* **source**: ``qat`` (the QDQ export of a QAT model), ``qdq`` (a QDQ ONNX written by
  :mod:`edgekit.quantize` in the backend's form) or ``calibration`` (the backend's own quantizer, run in
  its build on the FP32 ONNX with the calibration set).
* **search**: ``one`` (the named method), ``first_passing`` (the methods in order, each with the
  fallbacks, until one keeps FP32's detections) or ``best`` (``auto``: every method built and
  measured, the best one ships, within ``max_drop``).
* **built_on**: ``host``, or ``device`` (TensorRT builds its engine on the board).

A QDQ backend's ``default`` searches, in a deploy as in ``edgekit build``: its methods in order, then the
layers that move the detections most kept in float (:data:`FLOAT_FALLBACK`), until one keeps FP32's
detections; a deploy's quantize stage writes the QDQ file that passed, the build stage checks it again.
With a ``keep_float`` list of the user's, a deploy quantizes with the first method alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgekit.core.errors import ConfigError

#: Layers a QDQ backend keeps in float, in turn, when no calibration method keeps the detections.
FLOAT_FALLBACK = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Int8Plan:
    """The INT8 decision of one build (see the module docstring).

    Attributes:
        backend: Backend name.
        source: ``qat``, ``qdq`` or ``calibration``.
        calibrator: What was asked: ``default``, ``auto`` or a method name.
        methods: The calibration methods built, in order.
        search: ``one``, ``first_passing`` or ``best``.
        built_on: ``host`` or ``device``.
        max_drop: ``best``: what the chosen method may lose (mAP points in a deploy, detection-recall
            points in ``edgekit build``); ``None`` otherwise.
        keep_float: Nodes a QDQ writer keeps in float (``auto`` = the detector's head).
        fallback: The backend's quantizer settings tried with each method (a self-quantizing backend),
            or the counts of most sensitive layers kept in float (a QDQ one), when no method passes
            (``first_passing``) or every one loses more than ``max_drop`` (``best`` in ``edgekit build``).
    """

    backend: str
    source: Literal["qat", "qdq", "calibration"]
    calibrator: str
    methods: tuple[str, ...]
    search: Literal["one", "first_passing", "best"]
    built_on: Literal["host", "device"]
    max_drop: float | None = None
    keep_float: Any = "auto"
    fallback: tuple[Any, ...] = ()

    @property
    def method(self) -> str:
        """``auto`` for the ``best`` search, else the first method built."""
        return "auto" if self.search == "best" else self.methods[0]

    @property
    def quantize_stage(self) -> bool:
        """A deploy writes the INT8 model in a quantize stage before the build (QAT and QDQ sources)."""
        return self.source in ("qat", "qdq")

    def describe(self) -> dict[str, Any]:
        """A plain-dict view (``--dry-run``, the record)."""
        return {
            "source": self.source,
            "calibrator": self.calibrator,
            "methods": list(self.methods),
            "search": self.search,
            "built_on": self.built_on,
            "max_drop": self.max_drop,
            "fallback": [f if isinstance(f, int) else dict(f) for f in self.fallback],
        }


def decide_int8(
    backend_cls: type,
    calibrator: str | None = None,
    *,
    qat: bool = False,
    max_drop: float | None = None,
    keep_float: Any = "auto",
    deploy: bool = True,
    option: str = "--calibrator",
    recipe: str = "the recipe",
) -> Int8Plan:
    """Decide how an INT8 artifact of ``backend_cls`` is made.

    Args:
        backend_cls: The target's backend class.
        calibrator: ``default`` (or ``None``), ``auto`` or one of the backend's methods.
        qat: The recipe makes INT8 by QAT.
        max_drop: What ``auto`` may lose.
        keep_float: Nodes a QDQ writer keeps in float.
        deploy: For ``edgekit deploy`` (else ``edgekit build``, which searches on the host).
        option: The option that names the calibrator, for the error's hint.
        recipe: The recipe's name, for the QAT error.

    Raises:
        ConfigError: QAT for a backend that quantizes itself, or a calibrator the backend lacks.

    Example:
        >>> from edgekit.core.registry import BACKENDS
        >>> plan = decide_int8(BACKENDS.get("onnxruntime"), "auto", max_drop=1.0)
        >>> plan.source, plan.search, plan.methods[0]
        ('qdq', 'best', 'minmax')
    """
    name, methods = backend_cls.name, tuple(backend_cls.methods)
    built_on = backend_cls.build_location
    if qat:
        if backend_cls.int8_source != "qdq":
            raise ConfigError(
                f"{recipe} makes INT8 by QAT (a QDQ ONNX), but backend {name} quantizes the FP32 model "
                "itself with its own quantizer",
                "use a recipe with a ptq step for this target",
            )
        return Int8Plan(name, "qat", "qat", ("qat",), "one", built_on)
    asked = calibrator or "default"
    source = backend_cls.int8_source
    if asked not in (*methods, "auto", "default"):
        raise ConfigError(
            f"calibrator '{asked}' is not a method of backend {name}",
            f"use one of: {', '.join(methods)}, auto, or default ({option})",
        )
    fallback = FLOAT_FALLBACK if source == "qdq" else tuple(backend_cls.fallback)
    if asked == "auto":  # edgekit build goes on to the fallbacks when every method loses too much
        return Int8Plan(name, source, asked, methods, "best", built_on, max_drop, keep_float,
                        () if deploy else fallback)  # fmt: skip
    if asked != "default":
        return Int8Plan(name, source, asked, (asked,), "one", built_on, None, keep_float)
    if source == "qdq" and deploy and keep_float != "auto":  # the user's own float list: as given
        return Int8Plan(name, source, asked, methods[:1], "one", built_on, None, keep_float)
    return Int8Plan(name, source, asked, methods, "first_passing", built_on, None, keep_float, fallback)
