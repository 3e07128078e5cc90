"""Optimizer parameter groups per layer group: discriminative learning rates, frozen parameters left out.

Example (Adam 1e-3, every earlier group at a third of the next one's rate):
    >>> from vol_transfer.nets import build_network
    >>> net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 2})
    >>> optimizer = make_optimizer(net, "adam", lr=1e-3, weight_decay=1e-5, decay=1 / 3)
    >>> [float(f"{g['lr']:.3g}") for g in optimizer.param_groups]
    [4.12e-06, 1.23e-05, 3.7e-05, 0.000111, 0.000333, 0.001]

Frozen parameters (``requires_grad=False``) are not given to the optimizer, so they get neither
updates nor weight decay. When a :class:`~vol_transfer.transfer.freezing.FreezingSchedule` changes
the trainable set, :func:`rebuild_optimizer` makes a new optimizer that keeps the state (e.g. Adam
moments) of every parameter that stays trainable. (PyTorch optimizers also skip parameters whose
``grad`` is None, and freezing sets ``grad`` to None, so an optimizer built over all parameters is
safe too; it just keeps stale entries.) LR schedulers hold a reference to their optimizer: create
them again after a rebuild (or use ``initial_lr``, which is carried over).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vol_transfer.errors import RecipeError
from vol_transfer.transfer.groups import LayerGroups, check_group_names, group_parameters, layer_groups_of

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def lr_multipliers(
    names: Sequence[str], *, multipliers: Mapping[str, float] | None = None, decay: float | None = None
) -> dict[str, float]:
    """Learning-rate multiplier per group.

    ``multipliers`` sets them by name (others 1.0); ``decay`` gives the last group 1.0 and each
    earlier group ``decay`` times the next one's. Choose one of the two, or neither (all 1.0).
    """
    if multipliers is not None and decay is not None:
        raise RecipeError("optimizer", "both lr multipliers and lr decay are set", "choose one of them")
    result = {name: 1.0 for name in names}
    if multipliers is not None:
        check_group_names(multipliers, result, "optimizer.lr_multipliers")
        for name, value in multipliers.items():
            if not float(value) >= 0:
                raise RecipeError(f"optimizer.lr_multipliers.{name}", f"multiplier {value!r} is negative", "use ≥ 0")
            result[name] = float(value)
    if decay is not None:
        if not 0 < float(decay) <= 1:
            raise RecipeError("optimizer.lr_decay", f"decay {decay!r} is outside (0, 1]", "use e.g. 0.5 or 1/3")
        for position, name in enumerate(reversed(list(names))):
            result[name] = float(decay) ** position
    return result


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    groups: LayerGroups | None = None,
    multipliers: Mapping[str, float] | None = None,
    decay: float | None = None,
) -> list[dict[str, Any]]:
    """One optimizer parameter group per layer group that has trainable parameters.

    Each dict has ``name`` (the layer group), ``params``, ``lr`` (= lr × multiplier) and ``weight_decay``.
    """
    patterns = layer_groups_of(model, groups)
    factors = lr_multipliers(list(patterns), multipliers=multipliers, decay=decay)
    result = []
    for name, params in group_parameters(model, patterns).items():
        trainable = [p for p in params if p.requires_grad]
        if trainable:
            result.append({"name": name, "params": trainable, "lr": lr * factors[name], "weight_decay": weight_decay})
    return result


def make_optimizer(
    model: nn.Module,
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    *,
    groups: LayerGroups | None = None,
    multipliers: Mapping[str, float] | None = None,
    decay: float | None = None,
    **options: Any,
) -> torch.optim.Optimizer:
    """An optimizer over the trainable parameters, one param group per layer group."""
    optimizer_class = OPTIMIZERS.get(name.lower())
    if optimizer_class is None:
        raise RecipeError("optimizer.name", f"unknown optimizer {name!r}", f"use one of {list(OPTIMIZERS)}")
    grouped = param_groups(model, lr, weight_decay, groups=groups, multipliers=multipliers, decay=decay)
    if not grouped:
        raise RecipeError("freezing", "every parameter is frozen: nothing to train", "freeze fewer groups")
    return optimizer_class(grouped, lr=lr, weight_decay=weight_decay, **options)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, new_param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """A new optimizer of the same class and defaults over ``new_param_groups``, keeping the state
    of parameters that were already being optimised (and ``initial_lr`` of groups with the same name)."""
    if not new_param_groups:
        raise RecipeError("freezing", "every parameter is frozen: nothing to train", "freeze fewer groups")
    old_by_name = {group.get("name"): group for group in optimizer.param_groups}
    for group in new_param_groups:
        old = old_by_name.get(group.get("name"))
        if old is not None and "initial_lr" in old:
            group.setdefault("initial_lr", old["initial_lr"])
    rebuilt = type(optimizer)(new_param_groups, **optimizer.defaults)
    for group in rebuilt.param_groups:
        for param in group["params"]:
            if param in optimizer.state:
                rebuilt.state[param] = optimizer.state[param]
    return rebuilt


__all__ = ["OPTIMIZERS", "lr_multipliers", "param_groups", "make_optimizer", "rebuild_optimizer"]
