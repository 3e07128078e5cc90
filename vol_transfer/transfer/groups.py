"""Layer groups: an ordered map ``group name → parameter-name patterns`` for any ``nn.Module``.

The same map drives freezing, discriminative learning rates, head replacement and the parameter
table (the idea of timm's ``group_matcher``). Patterns are shell-style globs matched against the
full parameter/buffer name (``fnmatch``); the first group whose pattern matches wins.

A model declares its groups with a ``layer_groups`` attribute (HighRes3DNet does, with
:data:`vol_transfer.nets.highres3dnet.HIGHRES3DNET_GROUPS`; MONAI networks get theirs from the
recipe's ``network.groups`` or :mod:`vol_transfer.nets.monai_networks`, checked with
:func:`check_partition`); otherwise every top-level child is a group of its own.

Example:
    >>> from vol_transfer.nets import build_network
    >>> net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    >>> list(layer_groups_of(net))
    ['conv_0', 'res_1', 'res_2', 'res_3', 'conv_1', 'conv_2']
    >>> [row.parameters for row in parameter_table(net)]
    [896, 41664, 152416, 608960, 5280, 164]
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from torch import nn

from vol_transfer.errors import RecipeError

LayerGroups = Mapping[str, Sequence[str]]

def layer_groups_of(model: nn.Module, groups: LayerGroups | None = None) -> "OrderedDict[str, tuple[str, ...]]":
    """The group map to use for ``model``: ``groups`` if given, else ``model.layer_groups``, else
    one group per top-level child (``"<child>.*"``)."""
    if groups is None:
        groups = getattr(model, "layer_groups", None)
    if groups is None:
        groups = {name: (f"{name}.*",) for name, child in model.named_children() if _has_state(child)}
    ordered: OrderedDict[str, tuple[str, ...]] = OrderedDict()
    for name, patterns in groups.items():
        ordered[name] = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    return ordered


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def group_of(name: str, groups: LayerGroups) -> str | None:
    """The first group whose pattern matches the parameter/buffer ``name``, or None."""
    for group, patterns in groups.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return group
    return None


def assign_names(names: Iterable[str], groups: LayerGroups, where: str = "layer groups") -> "OrderedDict[str, list[str]]":
    """Split ``names`` by group (every group present, in order).

    Raises:
        RecipeError: listing every name that no pattern matches.
    """
    assigned: OrderedDict[str, list[str]] = OrderedDict((group, []) for group in groups)
    unmatched = []
    for name in names:
        group = group_of(name, groups)
        if group is None:
            unmatched.append(name)
        else:
            assigned[group].append(name)
    if unmatched:
        raise RecipeError(
            where,
            f"{len(unmatched)} name(s) belong to no group: {', '.join(unmatched)}",
            "add patterns for them to a group (or a catch-all '*' pattern to the last group)",
        )
    return assigned


def check_partition(model: nn.Module, groups: LayerGroups, where: str = "network.groups", shown: int = 4) -> None:
    """Check that every parameter and buffer of ``model`` matches exactly one group's patterns and
    that every pattern matches something (recipe-given groups: first-match-wins hides mistakes).

    Raises:
        RecipeError: one line naming the pattern that matches nothing, or the tensors matched by no
            group or by two groups (the first ``shown`` of them, with the count).
    """
    groups = layer_groups_of(model, groups)
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    for group, patterns in groups.items():
        if not patterns:
            raise RecipeError(f"{where}.{group}", "has no patterns", "list glob patterns, e.g. ['convInit.*']")
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                stems = sorted({name.split(".")[0] for name in names})
                raise RecipeError(f"{where}.{group}", f"pattern {pattern!r} matches no parameter",
                                  f"fix or drop it (top-level modules: {', '.join(stems)})")
    unmatched, twice = [], []
    for name in names:
        owners = [g for g, patterns in groups.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        if not owners:
            unmatched.append(name)
        elif len(owners) > 1:
            twice.append(f"{name} ({' and '.join(owners)})")

    def listed(items: list[str]) -> str:
        more = f", … ({len(items)} in all)" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    for items, problem, fix in ((unmatched, "belong to no group", "add patterns for them to a group (every parameter "
                                 "must be in exactly one group)"),
                                (twice, "are matched by two groups", "narrow the patterns so every parameter is in "
                                 "exactly one group")):
        if items:
            error = RecipeError(where, f"{len(items)} parameter(s)/buffer(s) {problem}: {listed(items)}", fix)
            error.details = list(items)  # --debug lists them all
            raise error


def check_group_names(names: Iterable[str], groups: LayerGroups, where: str = "groups") -> list[str]:
    """Return ``names`` as a list, raising RecipeError for any name that is not a group."""
    names = list(names)
    unknown = [name for name in names if name not in groups]
    if unknown:
        raise RecipeError(where, f"unknown layer group(s) {unknown}", f"use names from {list(groups)}")
    return names


def group_parameters(model: nn.Module, groups: LayerGroups | None = None) -> "OrderedDict[str, list[nn.Parameter]]":
    """Parameters of ``model`` by group, in group order (every parameter in exactly one group)."""
    groups = layer_groups_of(model, groups)
    params = dict(model.named_parameters())
    assigned = assign_names(params, groups)
    return OrderedDict((group, [params[name] for name in names]) for group, names in assigned.items())


def group_modules(model: nn.Module, groups: LayerGroups | None = None) -> "OrderedDict[str, list[nn.Module]]":
    """Modules that own parameters or buffers, by group (a module goes where its first tensor goes)."""
    groups = layer_groups_of(model, groups)
    result: OrderedDict[str, list[nn.Module]] = OrderedDict((group, []) for group in groups)
    for module_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
        if not own:
            continue
        full = f"{module_name}.{own[0]}" if module_name else own[0]
        group = group_of(full, groups)
        if group is not None:
            result[group].append(module)
    return result


@dataclass(frozen=True)
class GroupCount:
    """One row of the parameter table (numbers of scalar elements)."""

    group: str
    parameters: int
    trainable: int
    buffers: int


def parameter_table(model: nn.Module, groups: LayerGroups | None = None) -> list[GroupCount]:
    """Per group: all parameters, the currently trainable ones, and buffer elements (BN statistics)."""
    groups = layer_groups_of(model, groups)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    by_param = assign_names(params, groups)
    by_buffer = assign_names(buffers, groups)
    rows = []
    for group in groups:
        tensors = [params[name] for name in by_param[group]]
        rows.append(
            GroupCount(
                group=group,
                parameters=sum(t.numel() for t in tensors),
                trainable=sum(t.numel() for t in tensors if t.requires_grad),
                buffers=sum(buffers[name].numel() for name in by_buffer[group]),
            )
        )
    return rows


def format_parameter_table(rows: Sequence[GroupCount]) -> str:
    """The parameter table as aligned text, with a total row, for logs."""
    header = ("group", "parameters", "trainable", "buffers")
    lines = [(r.group, f"{r.parameters:,}", f"{r.trainable:,}", f"{r.buffers:,}") for r in rows]
    lines.append(
        (
            "total",
            f"{sum(r.parameters for r in rows):,}",
            f"{sum(r.trainable for r in rows):,}",
            f"{sum(r.buffers for r in rows):,}",
        )
    )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(4)]
    text = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *lines]
    ]
    return "\n".join(text)


def head_group(model: nn.Module, groups: LayerGroups | None = None) -> str:
    """The last group: the head that is replaced when the class count changes."""
    return next(reversed(layer_groups_of(model, groups)))


__all__ = [
    "LayerGroups",
    "layer_groups_of",
    "group_of",
    "assign_names",
    "check_group_names",
    "check_partition",
    "group_parameters",
    "group_modules",
    "GroupCount",
    "parameter_table",
    "format_parameter_table",
    "head_group",
]
