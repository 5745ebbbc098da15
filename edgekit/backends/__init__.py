"""Backends: one module per runtime, found through :data:`edgekit.core.registry.BACKENDS`.

Nothing here imports a runtime; ``edgekit.backends.base`` holds the contract every backend follows.
"""

from edgekit.backends.base import Artifact, Backend, BuildOptions, Problem

__all__ = ["Artifact", "Backend", "BuildOptions", "Problem"]
