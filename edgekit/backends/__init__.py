"""Backends: one module per runtime, found through :data:`edgekit.core.registry.BACKENDS`.

Nothing here imports a runtime; ``edgekit.backends.contract.base`` holds the contract every backend follows.
"""

from edgekit.backends.contract.base import Artifact, Backend, BuildOptions, Problem

__all__ = ["Artifact", "Backend", "BuildOptions", "Problem"]
