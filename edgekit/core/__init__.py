"""What every part of edgekit leans on: errors, targets, the backend registry, files and progress.

Errors carry a hint; targets are typed YAML; the registry is the one place that lists the backends; files
are written atomically; long steps report progress. Nothing here imports the rest of edgekit (``config``
reads CPU facts from ``runners/runcore``).
"""
