"""Freezing layer groups, and schedules that change the frozen set during training.

A frozen parameter has ``requires_grad=False`` and ``grad=None``: autograd computes no weight
gradient for it (and no backward at all through a frozen prefix of the network), optimizers skip
it, and weight decay never touches it, so it stays bit-identical.

BN policy for frozen groups (explicit everywhere; default ``"update"``):

- ``"update"``: BN layers of frozen groups stay in training mode, normalise with batch statistics
  and keep updating their running statistics; only their affine weights are frozen. This is what
  the study's framework (NiftyNet) did, so it is the default that reproduces the study.
- ``"freeze"``: BN layers of frozen groups are held in eval mode (running statistics used and left
  unchanged), even after ``model.train()``.

Schedules are built from a typed recipe spec (:mod:`vol_transfer.transfer.freezing_spec`) with
:meth:`FreezingSchedule.from_spec`, or with the constructors below.

Example (the study's model 4):
    >>> from vol_transfer.nets import build_network
    >>> net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 2})
    >>> schedule = FreezingSchedule.from_spec({"kind": "freeze_first", "k": 4}, net)
    >>> schedule.apply(net, 0)
    True
    >>> frozen_groups(net)
    ['conv_0', 'res_1', 'res_2', 'res_3']

In a training loop, rebuild the optimizer whenever :meth:`FreezingSchedule.apply` changes the
trainable set (:mod:`vol_transfer.transfer.lr_groups`)::

    for iteration in range(start, stop):
        if schedule.apply(net, iteration):
            optimizer = rebuild_optimizer(optimizer, param_groups(net, lr))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, Union

from torch import nn

from vol_transfer.errors import RecipeError
from vol_transfer.transfer.freezing_spec import FreezingSpec, parse_freezing_spec
from vol_transfer.transfer.groups import LayerGroups, check_group_names, group_modules, group_parameters, layer_groups_of

BN_POLICIES = ("update", "freeze")
DEFAULT_BN_POLICY = "update"

GroupsLike = Union[nn.Module, LayerGroups, Sequence[str]]

_FROZEN_STATS_FLAG = "_vol_transfer_frozen_stats"
_HOOK_FLAG = "_vol_transfer_stats_hook"


def group_names(groups: GroupsLike) -> list[str]:
    """Ordered group names from a model, a group map or a list of names."""
    if isinstance(groups, nn.Module):
        return list(layer_groups_of(groups))
    if isinstance(groups, Mapping):
        return list(groups)
    return list(groups)


def _check_bn_policy(bn_policy: str) -> str:
    if bn_policy not in BN_POLICIES:
        raise RecipeError("freezing.bn_policy", f"unknown BN policy {bn_policy!r}", f"use one of {list(BN_POLICIES)}")
    return bn_policy


def _hold_eval_mode(module: nn.Module, _inputs: Any) -> None:
    # forward pre-hook: a BN layer with frozen statistics always runs in eval mode
    if getattr(module, _FROZEN_STATS_FLAG, False):
        module.training = False


def _set_stats_frozen(module: nn.modules.batchnorm._BatchNorm, frozen: bool, training: bool) -> None:
    if frozen and not getattr(module, _HOOK_FLAG, False):
        module.register_forward_pre_hook(_hold_eval_mode)
        setattr(module, _HOOK_FLAG, True)
    setattr(module, _FROZEN_STATS_FLAG, frozen)
    module.training = False if frozen else training


def set_frozen(
    model: nn.Module,
    frozen: Iterable[str],
    *,
    bn_policy: str = DEFAULT_BN_POLICY,
    groups: LayerGroups | None = None,
) -> bool:
    """Freeze exactly the groups in ``frozen`` and make every other group trainable.

    Returns True when the set of trainable parameters changed.
    """
    _check_bn_policy(bn_policy)
    patterns = layer_groups_of(model, groups)
    frozen = set(check_group_names(frozen, patterns, "freezing.groups"))
    changed = False
    for group, params in group_parameters(model, patterns).items():
        trainable = group not in frozen
        for param in params:
            if param.requires_grad != trainable:
                changed = True
                param.requires_grad_(trainable)
            if not trainable:
                param.grad = None
    for group, modules in group_modules(model, patterns).items():
        for module in modules:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                _set_stats_frozen(module, group in frozen and bn_policy == "freeze", model.training)
    return changed


def freeze_first(
    model: nn.Module, k: int, *, bn_policy: str = DEFAULT_BN_POLICY, groups: LayerGroups | None = None
) -> list[str]:
    """Freeze the first ``k`` groups (the study's "model k"); return their names."""
    names = group_names(layer_groups_of(model, groups))
    if not 0 <= k <= len(names):
        raise RecipeError("freezing.k", f"k={k} is outside 0..{len(names)}", f"choose k between 0 and {len(names)}")
    set_frozen(model, names[:k], bn_policy=bn_policy, groups=groups)
    return names[:k]


def frozen_groups(model: nn.Module, groups: LayerGroups | None = None) -> list[str]:
    """Groups whose parameters are all frozen (groups without parameters are not listed)."""
    return [
        group
        for group, params in group_parameters(model, layer_groups_of(model, groups)).items()
        if params and not any(p.requires_grad for p in params)
    ]


@dataclass
class FreezingSchedule:
    """Which groups are frozen from which iteration on.

    ``phases`` is a list of ``(start_iteration, frozen_group_names)`` sorted by start; the first
    phase starts at 0. Build one with :meth:`freeze_first`, :meth:`warmup`, :meth:`gradual`,
    :meth:`at_iterations` or :meth:`from_spec`; the training loop calls :meth:`apply` every
    iteration and rebuilds its optimizer when it returns True.
    """

    phases: list[tuple[int, tuple[str, ...]]]
    bn_policy: str = DEFAULT_BN_POLICY
    groups: LayerGroups | None = None
    last_iteration: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_bn_policy(self.bn_policy)
        phases = sorted((int(start), tuple(frozen)) for start, frozen in self.phases)
        if not phases or phases[0][0] != 0:
            raise RecipeError("freezing.phases", "the first phase must start at iteration 0", "add a phase for iteration 0")
        starts = [start for start, _ in phases]
        if len(set(starts)) != len(starts):
            raise RecipeError("freezing.phases", f"two phases start at the same iteration: {starts}", "merge them")
        if self.groups is not None:
            for _, frozen in phases:
                check_group_names(frozen, self.groups, "freezing.phases")
        self.phases = phases

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def none(cls, bn_policy: str = DEFAULT_BN_POLICY) -> "FreezingSchedule":
        """Everything trainable throughout (training from scratch, or plain fine-tuning)."""
        return cls([(0, ())], bn_policy)

    @classmethod
    def freeze_first(cls, k: int, groups: GroupsLike, bn_policy: str = DEFAULT_BN_POLICY) -> "FreezingSchedule":
        """The first ``k`` groups frozen for the whole run (the study's models 1–5)."""
        return cls.from_spec({"kind": "freeze_first", "k": k, "bn_policy": bn_policy}, groups)

    @classmethod
    def warmup(
        cls, iterations: int, groups: GroupsLike, head: Sequence[str] | None = None, bn_policy: str = DEFAULT_BN_POLICY
    ) -> "FreezingSchedule":
        """Train only the head (default: the last group) for ``iterations``, then everything."""
        spec = {"kind": "warmup", "iterations": iterations, "head": None if head is None else list(head)}
        return cls.from_spec({**spec, "bn_policy": bn_policy}, groups)

    @classmethod
    def gradual(
        cls, every: int, groups: GroupsLike, start_frozen: int | None = None, bn_policy: str = DEFAULT_BN_POLICY
    ) -> "FreezingSchedule":
        """Gradual unfreezing: start with the first ``start_frozen`` groups frozen (default: all but
        the head) and unfreeze one more group, from the top down, every ``every`` iterations."""
        return cls.from_spec({"kind": "gradual", "every": every, "start_frozen": start_frozen, "bn_policy": bn_policy},
                             groups)

    @classmethod
    def at_iterations(
        cls, phases: Mapping[int, Sequence[str]], groups: GroupsLike | None = None, bn_policy: str = DEFAULT_BN_POLICY
    ) -> "FreezingSchedule":
        """Explicit phases: ``{0: ["conv_0", "res_1"], 1000: ["conv_0"], 2000: []}``."""
        return cls([(int(start), tuple(frozen)) for start, frozen in phases.items()], bn_policy,
                   _patterns(groups) if groups is not None else None)

    @classmethod
    def from_spec(cls, spec: FreezingSpec | Mapping[str, Any] | None, groups: GroupsLike,
                  where: str = "freezing") -> "FreezingSchedule":
        """From a typed spec (:mod:`vol_transfer.transfer.freezing_spec`) or a recipe mapping
        ``{"kind": "none" | "freeze_first" | "warmup" | "gradual" | "phases", ...}`` read through the
        same types; ``None`` freezes nothing. Group names and counts are checked against ``groups``.

        Keys per kind: freeze_first ``k``; warmup ``iterations`` (+ ``head``); gradual ``every``
        (+ ``start_frozen``); phases ``phases`` ({iteration: [groups]} or [[iteration, [groups]], ...]).
        Every kind takes ``bn_policy`` (default ``"update"``).
        """
        typed = parse_freezing_spec(spec, where)
        names = group_names(groups)
        typed.check_groups(names, where)
        return cls(typed.phases_for(names), typed.bn_policy, _patterns(groups))

    def to_spec(self) -> dict[str, Any]:
        """JSON-serialisable canonical form (``kind: phases``); ``from_spec`` reads it back."""
        return {"kind": "phases", "phases": [[start, list(frozen)] for start, frozen in self.phases],
                "bn_policy": self.bn_policy}

    # --- use ----------------------------------------------------------------------------------
    def frozen_at(self, iteration: int) -> tuple[str, ...]:
        """The frozen groups at ``iteration``."""
        current: tuple[str, ...] = ()
        for start, frozen in self.phases:
            if start > iteration:
                break
            current = frozen
        return current

    def change_points(self) -> list[int]:
        """Iterations at which the frozen set changes (after 0)."""
        return [start for start, _ in self.phases[1:]]

    def apply(self, model: nn.Module, iteration: int) -> bool:
        """Make ``model`` match the schedule at ``iteration``; True when its trainable set changed."""
        self.last_iteration = int(iteration)
        return set_frozen(model, self.frozen_at(iteration), bn_policy=self.bn_policy, groups=self.groups)

    def state_dict(self) -> dict[str, Any]:
        """What the training engine saves to resume (primitive containers only)."""
        return {**self.to_spec(), "last_iteration": self.last_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore phases, BN policy and the last applied iteration; call :meth:`apply` afterwards."""
        restored = FreezingSchedule([(int(s), tuple(f)) for s, f in state["phases"]], state["bn_policy"], self.groups)
        self.phases, self.bn_policy = restored.phases, restored.bn_policy
        self.last_iteration = state.get("last_iteration")


def _patterns(groups: GroupsLike) -> LayerGroups | None:
    """Keep the group map when one was given (models carry their own; plain names carry none)."""
    if isinstance(groups, nn.Module):
        return layer_groups_of(groups)
    if isinstance(groups, Mapping):
        return layer_groups_of(nn.Module(), groups)
    return None


__all__ = [
    "BN_POLICIES",
    "DEFAULT_BN_POLICY",
    "set_frozen",
    "freeze_first",
    "frozen_groups",
    "group_names",
    "FreezingSchedule",
]
