"""Networks by name: ``build_network(config)`` turns a JSON-serialisable config into a module.

A config is ``{"name": ..., "in_channels": int, "num_classes": int, ...options}``; the same dict is
stored in every checkpoint's metadata (``"architecture"``) so a model can be rebuilt from it.
Other modules add their networks with :func:`register_network`.

Example:
    >>> net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    >>> sum(p.numel() for p in net.parameters())
    809380
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable

import torch

from vol_transfer.errors import RecipeError

NetworkFactory = Callable[..., torch.nn.Module]

_REGISTRY: dict[str, NetworkFactory] = {}


def register_network(name: str, factory: NetworkFactory) -> None:
    """Make ``build_network({"name": name, ...})`` call ``factory(**options)``.

    ``factory`` receives every config key except ``"name"`` as a keyword argument. Registering the
    same name twice with a different factory is a programming error (``ValueError``).
    """
    key = name.lower()
    existing = _REGISTRY.get(key)
    if existing is not None and existing is not factory:
        raise ValueError(f"network name {name!r} is already registered to {existing!r}")
    _REGISTRY[key] = factory


def available_networks() -> list[str]:
    """Names accepted by :func:`build_network`, sorted."""
    _register_builtin()
    _import_network_modules()
    return sorted(_REGISTRY)


def _accepted_options(factory: NetworkFactory) -> set[str] | None:
    """Keyword names the factory takes, or None when it accepts ``**kwargs``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_network(config: dict[str, Any]) -> torch.nn.Module:
    """Build the network ``config["name"]`` with the remaining keys as options.

    Raises:
        RecipeError: unknown name, missing ``in_channels``/``num_classes`` or an unknown option,
            naming the key and the accepted values.
    """
    _register_builtin()
    if not isinstance(config, dict) or "name" not in config:
        raise RecipeError("network", f"config {config!r} has no 'name'", f"add name: one of {available_networks()}")
    name = str(config["name"]).lower()
    factory = _REGISTRY.get(name)
    if factory is None:
        _import_network_modules()
        factory = _REGISTRY.get(name)
    if factory is None:
        raise RecipeError("network.name", f"unknown network {config['name']!r}", f"use one of {available_networks()}")
    options = {key: value for key, value in config.items() if key != "name"}
    for required in ("in_channels", "num_classes"):
        if required not in options:
            raise RecipeError(f"network.{required}", "is missing", f"add {required}: <int> to the network config")
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise RecipeError(
                f"network.{unknown[0]}", f"unknown option(s) {unknown} for {name}", f"use only {sorted(accepted)}"
            )
    try:
        return factory(**options)
    except (TypeError, ValueError) as error:
        raise RecipeError("network", f"{name}: {error}", "fix that option in the network config") from error


_BUILTIN_DONE = False


def _register_builtin() -> None:
    # imported lazily so that importing vol_transfer.nets stays cheap and cycle-free
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from vol_transfer.nets.highres3dnet import HighRes3DNet

    register_network("highres3dnet", HighRes3DNet)


def _import_network_modules() -> None:
    """Import every module of this package so the ``register_network`` calls in them run."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


__all__ = ["build_network", "register_network", "available_networks", "NetworkFactory"]
