"""Transfer weights into a new model: match by name, adapt what can be adapted, report everything.

Rules, for every tensor of the target model:

- same name and shape in the source → **copied** (unless it matches ``reinitialise`` patterns);
- a convolution whose input-channel count differs (e.g. a 1-channel hippocampus model into a
  2-channel FLAIR+T1c model) → **adapted** with the method chosen in ``channels``:
  ``"repeat"`` tiles the kernels over the new channels and rescales by in_old/in_new (the response to
  identical channels is unchanged), ``"mean"`` gives every new channel the mean kernel, rescaled the
  same way, ``"first"`` copies the first channels as they are and zero-fills the others (the new model
  initially sees only the first channels). There is no default: a mismatch without a choice is an error;
- in the head (default: the model's last layer group) with another shape, or absent from the source
  → **re-initialised** (keeps the new model's own initialisation), e.g. when the class count differs;
- source tensors the target lacks → **ignored**.

A MONAI ``HighResNet`` state dict given for our HighRes3DNet is renamed first
(:mod:`vol_transfer.nets.monai_import`).

Anything else (a shape that cannot be adapted, a body tensor missing from the source) raises one
CheckpointError listing every key.

Example (a 1-channel model into a 2-channel one with another class count):
    >>> from vol_transfer.nets import build_network
    >>> hippocampus_net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 3})
    >>> brats_net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    >>> report = transfer_weights(brats_net, hippocampus_net.state_dict(), channels="repeat")
    >>> sorted(report.adapted)
    ['conv_0.conv.weight']

With a checkpoint file, ``transfer_weights(brats_net, load_checkpoint("hippocampus.pt"),
channels="repeat")``; ``print(report.table())`` lists every adapted, re-initialised and ignored
tensor.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from vol_transfer.errors import CheckpointError, PathLike
from vol_transfer.transfer.checkpoint import Checkpoint
from vol_transfer.transfer.groups import LayerGroups, layer_groups_of

CHANNEL_ADAPTATIONS = ("repeat", "mean", "first")


def adapt_input_channels(weight: torch.Tensor, in_channels: int, method: str) -> torch.Tensor:
    """Kernels ``(out, in_old, *k)`` → ``(out, in_channels, *k)`` with ``method`` (see module doc)."""
    if method not in CHANNEL_ADAPTATIONS:
        raise ValueError(f"channel adaptation must be one of {CHANNEL_ADAPTATIONS}, not {method!r}")
    old = weight.shape[1]
    if method == "first":
        adapted = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]))
        keep = min(old, in_channels)
        adapted[:, :keep] = weight[:, :keep]
        return adapted
    scale = old / in_channels
    if method == "mean":
        return (weight.mean(dim=1, keepdim=True) * scale).expand(-1, in_channels, *weight.shape[2:]).clone()
    repeats = -(-in_channels // old)  # ceil
    tiled = weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))[:, :in_channels]
    return tiled * scale


@dataclass
class TransferReport:
    """What happened to every tensor: names, with a reason for adapted/re-initialised ones."""

    copied: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    channel_changes: dict[str, tuple[int, int]] = field(default_factory=dict)  # adapted: (source, target) inputs
    reinitialised: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"transfer: {len(self.copied)} copied, {len(self.adapted)} adapted, "
            f"{len(self.reinitialised)} re-initialised, {len(self.ignored)} ignored"
        )

    def table(self) -> str:
        """Every adapted, re-initialised and ignored tensor with its reason (copied ones counted)."""
        lines = [self.summary()]
        lines += [f"  adapted        {name}: {why}" for name, why in self.adapted.items()]
        lines += [f"  re-initialised {name}: {why}" for name, why in self.reinitialised.items()]
        lines += [f"  ignored        {name}: not in the target model" for name in self.ignored]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _is_input_channel_mismatch(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        source.dim() == target.dim() >= 3
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
        and source.shape[1] != target.shape[1]
    )


def _from_monai_if_needed(model: nn.Module, source: Mapping[str, torch.Tensor], where: str) -> Mapping[str, torch.Tensor]:
    """Rename a foreign HighRes3DNet state dict when the target is our HighRes3DNet: MONAI's
    HighResNet (``blocks.N…``) or the published Li et al. 2017 network (fepegar/highresnet's ``block.N…``)."""
    from vol_transfer.nets.highres3dnet import HighRes3DNet
    from vol_transfer.nets.li2017_import import is_li2017_state, li2017_to_ours
    from vol_transfer.nets.monai_import import monai_highresnet_to_ours

    target_keys = model.state_dict().keys()
    if not isinstance(model, HighRes3DNet) or any(key in source for key in target_keys):
        return source
    if any(key.startswith("blocks.") for key in source):
        return monai_highresnet_to_ours(source, where)
    if is_li2017_state(source):
        return li2017_to_ours(source, where)
    return source


def transfer_weights(
    model: nn.Module,
    source: Mapping[str, torch.Tensor] | Checkpoint,
    *,
    channels: str | None = None,
    head: Sequence[str] | str | None = "auto",
    reinitialise: Sequence[str] = (),
    groups: LayerGroups | None = None,
    where: PathLike | None = None,
) -> TransferReport:
    """Load ``source`` into ``model`` by name following the rules in the module doc.

    Args:
        channels: ``"repeat"``, ``"mean"`` or ``"first"`` to adapt input convolutions; None refuses.
        head: patterns of the head tensors that may be re-initialised; ``"auto"`` = the last layer
            group's patterns; None = no head replacement.
        reinitialise: extra patterns of tensors to re-initialise even when they fit.
        where: file name used in error messages (taken from a Checkpoint when given one).

    Raises:
        CheckpointError: listing every tensor that can be neither copied, adapted nor re-initialised.
    """
    if isinstance(source, Checkpoint):
        where = where or source.path
        source = source.state_dict
    where = where or "source weights"
    source = _from_monai_if_needed(model, source, str(where))
    if channels is not None and channels not in CHANNEL_ADAPTATIONS:
        raise CheckpointError(where, f"unknown channel adaptation {channels!r}", f"use one of {list(CHANNEL_ADAPTATIONS)}")
    patterns = layer_groups_of(model, groups)
    head_patterns = tuple(patterns[next(reversed(patterns))]) if head == "auto" else tuple([head] if isinstance(head, str) else head or ())

    target_state = model.state_dict()
    new_state = dict(target_state)
    report = TransferReport()
    problems: list[str] = []
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (source, target) of every shape problem
    for name, target in target_state.items():
        in_head = _matches(name, head_patterns)
        if _matches(name, reinitialise):
            report.reinitialised[name] = "requested"
            continue
        if name not in source:
            if in_head:
                report.reinitialised[name] = "not in the source (new head)"
            elif name.endswith("num_batches_tracked"):
                report.reinitialised[name] = "BN counter not in the source"
            else:
                problems.append(f"{name} is missing from the source")
            continue
        value = source[name]
        if value.shape == target.shape:
            new_state[name] = value.to(dtype=target.dtype)
            report.copied.append(name)
        elif in_head:
            report.reinitialised[name] = f"head shape {tuple(value.shape)} → {tuple(target.shape)}"
        elif _is_input_channel_mismatch(value, target):
            old, new = value.shape[1], target.shape[1]
            if channels is None:
                problems.append(f"{name} has {old} input channel(s), the model {new} (choose channels='repeat', 'mean' or 'first')")
                continue
            new_state[name] = adapt_input_channels(value, new, channels).to(dtype=target.dtype)
            report.adapted[name] = f"input channels {old} → {new} by {channels!r}"
            report.channel_changes[name] = (old, new)
        else:
            problems.append(f"{name} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
            shapes.append((tuple(value.shape), tuple(target.shape)))
    if problems:
        raise _mismatch_error(where, problems, shapes, len(target_state))
    report.ignored = [name for name in source if name not in target_state]
    model.load_state_dict(new_state)
    return report


SHOWN_PROBLEMS = 3


def _mismatch_error(where: PathLike, problems: list[str], shapes: list[tuple[tuple[int, ...], tuple[int, ...]]],
                    total: int) -> CheckpointError:
    """One short line: how many tensors, the likely cause, the first few (``--debug`` lists them all)."""
    fix = "choose a channel adaptation, list them in reinitialise=..., or use a matching architecture"
    missing = sum(p.endswith("is missing from the source") for p in problems)
    widths = [(s[0], t[0]) for s, t in shapes if s and t and s[0] != t[0]]
    channels_only = all("input channel(s)" in p for p in problems)
    if channels_only:
        cause = "the source has another number of input channels"
        fix = "choose a channel adaptation (transfer.channel_adaptation: repeat, mean or first)"
    elif len(widths) >= 2:
        (source_width, target_width), _ = max(((w, widths.count(w)) for w in set(widths)), key=lambda x: x[1])
        cause = (f"the source network has another width: its layers have {source_width} channels where this "
                 f"network has {target_width}")
        fix = ("transfer from a source with this network's width (network.options.width), or set the width "
               "to the source's")
    elif missing > total // 2:
        cause = f"the source is another architecture ({missing} of this network's {total} tensors are missing from it)"
        fix = "transfer from a source of this network's architecture (network.name)"
    elif shapes and all(len(s) == len(t) and s[1:] == t[1:] for s, t in shapes):
        cause = "the source has another number of classes and these tensors are outside the head"
    else:
        cause = "the source and this network differ in layout"
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f" (the first {SHOWN_PROBLEMS}; --debug lists all)" if len(problems) > SHOWN_PROBLEMS else ""
    error = CheckpointError(where, f"{len(problems)} tensor(s) cannot be transferred; likely cause: {cause}; "
                                   f"{shown}{more}", fix)
    error.details = list(problems)
    return error


__all__ = ["CHANNEL_ADAPTATIONS", "adapt_input_channels", "TransferReport", "transfer_weights"]
