"""Users' torch detectors: a ``package.module:factory`` that builds the model, plus a plain state dict."""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.core.errors import ConfigError, ModelError

_SPEC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_torch_model(spec: str, weights: str | Path | None = None, factory_kwargs: dict | None = None) -> Any:
    """Build a user's torch detector with ``package.module:factory`` and load a state dict into it.

    The module is imported with the current folder on ``sys.path``; ``factory(**factory_kwargs)``
    must return an ``nn.Module``. ``weights`` is a file saved with ``torch.save(model.state_dict())``
    (or a checkpoint dict holding it under ``state_dict`` / ``model_state_dict``); it is loaded
    with ``weights_only=True`` and strictly: every key must match.

    Args:
        spec: ``"package.module:factory"`` (the factory may be a dotted attribute, ``mod:Class.build``).
        weights: State dict file, or ``None`` to keep the factory's own weights.
        factory_kwargs: Keyword arguments for the factory.

    Returns:
        The model in eval mode.

    Raises:
        ConfigError: Bad spec syntax, module or factory not found, factory not callable.
        ModelError: Import or factory failed, result is not a module, weights missing or not matching.

    Example:
        >>> model = load_torch_model("mymodels.det:build", "det.pt", {"num_classes": 3})  # doctest: +SKIP
    """
    import torch

    factory = _resolve_factory(spec)
    try:
        model = factory(**(factory_kwargs or {}))
    except Exception as exc:  # user code: any failure is theirs to see, with its type
        raise ModelError(
            f"{spec}(**{factory_kwargs or {}}) raised {type(exc).__name__}: {exc}",
            "check the factory arguments",
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module", "return the model")
    if weights is not None:
        load_state(model, read_state_dict(weights))
    return model.eval()


def _resolve_factory(spec: str) -> Any:
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        raise ConfigError(
            f"model spec {spec!r} is not 'package.module:factory'", "write it like 'mymodels.detector:build'"
        )
    module_name, _, attr_path = spec.partition(":")
    module = _import_user_module(module_name)
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            known = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConfigError(
                f"module '{module_name}' ({getattr(module, '__file__', '?')}) has no '{attr_path}'",
                f"callables it defines: {', '.join(known[:10]) or 'none'}",
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{spec} is a {type(target).__name__}, not callable", "point at a function or class"
        )
    return target


def _import_user_module(name: str) -> Any:
    with _cwd_on_path():
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                raise ConfigError(
                    f"cannot find module '{name}' (looked in {Path.cwd()} and sys.path)",
                    "run edgekit from the folder holding the module, or add its folder to PYTHONPATH",
                ) from exc
            raise ModelError(f"importing '{name}' failed: {exc}", f"install '{exc.name}'") from exc
        except Exception as exc:  # the user's module failed while executing
            raise ModelError(
                f"importing '{name}' failed: {type(exc).__name__}: {exc}", "run `python -c 'import {name}'`"
            ) from exc


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def read_state_dict(weights: str | Path) -> dict[str, Any]:
    """Load a state dict (tensors only, ``weights_only=True``) from ``weights``.

    Raises:
        ModelError: Missing file, not a torch file, pickled objects other than tensors, or no state dict.
    """
    import torch

    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found", "check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors of many types
        raise ModelError(
            f"cannot load {path} as a state dict: {str(exc).strip().splitlines()[0][:300]}",
            "save the weights with torch.save(model.state_dict(), path)",
        ) from exc
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors", "save model.state_dict()")
    return obj


def load_state(model: Any, state: dict[str, Any]) -> None:
    """Load ``state`` strictly; mismatches become a :class:`ModelError` naming a few keys.

    Raises:
        ModelError: Missing keys, unexpected keys or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]
    if problems:
        raise ModelError(
            "the weights do not fit the model: " + "; ".join(problems), _state_hint(missing, unexpected)
        )
    model.load_state_dict(state, strict=True)


def _state_hint(missing: list[str], unexpected: list[str]) -> str:
    if unexpected and all(k.startswith("module.") for k in unexpected):
        return "the weights were saved from a DataParallel wrapper: save model.module.state_dict() instead"
    return "call the factory with the arguments the weights were trained with, or pick the matching weights"
