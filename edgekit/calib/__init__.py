"""Calibration sets: import, manifest + hashes, verify, iterate, export per backend.

Example:
    >>> from edgekit.calib import CalibrationSet, import_set  # doctest: +SKIP
    >>> import_set("data/shapes", "shapes", count=64, strategy="stratified")  # doctest: +SKIP
    >>> cs = CalibrationSet.load("shapes@v1").verify()  # doctest: +SKIP
    >>> fmt = "..."  # a format `edgekit calib export --help` lists  # doctest: +SKIP
    >>> cs.export(fmt, "build/calib", onnx="model.onnx")  # doctest: +SKIP
"""

from edgekit.calib.calibration_set import CalibrationSet, parse_ref
from edgekit.calib.importer import ImportResult, import_set
from edgekit.calib.manifest import Manifest

__all__ = ["CalibrationSet", "ImportResult", "Manifest", "import_set", "parse_ref"]
