"""Root pytest hooks: docstring examples that are all ``+SKIP`` are documentation, not tests.

Such examples need a trained model, a run folder or a board; collecting them would only add skipped items
with pytest's generic reason. Every other docstring example runs as a doctest in ``make test``.
"""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):
    """Deselect doctest items whose every example is marked ``+SKIP``."""
    keep, drop = [], []
    for item in items:
        test = getattr(item, "dtest", None)
        if test is not None and test.examples and all(ex.options.get(doctest.SKIP) for ex in test.examples):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
