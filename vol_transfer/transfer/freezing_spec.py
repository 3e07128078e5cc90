"""Typed freezing-schedule specs: the ``transfer.freezing`` section of a recipe, one dataclass per kind.

:data:`FreezingSpec` is a tagged union on ``kind`` (see :mod:`vol_transfer.recipes`), so a typo in
the kind or in one of its options is refused, with the closest valid name, when the recipe is
read. Group names can be checked only against a list of groups: :meth:`check_groups` takes the
model's (or, for a network whose groups are fixed, the recipe's) and
:class:`~vol_transfer.transfer.freezing.FreezingSchedule` turns a spec into phases with
:meth:`phases_for`.

Example:
    >>> spec = parse_freezing_spec({"kind": "freeze_first", "k": 2})
    >>> spec
    FreezeFirst(kind='freeze_first', k=2, until=None, bn_policy='update')
    >>> spec.phases_for(["conv_0", "res_1", "res_2"])
    [(0, ('conv_0', 'res_1'))]
    >>> parse_freezing_spec({"kind": "freez_first", "k": 2})
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: freezing.kind: 'freez_first' is not allowed — did you mean 'freeze_first'? choose one of 'none', 'freeze_first', 'warmup', 'gradual', 'phases'
    >>> parse_freezing_spec({"kind": "warmup", "iterations": 100}).check_groups(["conv_0", "head"], "freezing")
    >>> parse_freezing_spec({"kind": "phases", "phases": {0: ["conv0"], 500: []}}).check_groups(["conv_0", "head"], "freezing")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: freezing.phases.0: unknown layer group 'conv0' — did you mean 'conv_0'? groups: conv_0, head
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import closest, from_dict, option, tagged_union

BnPolicy = Literal["update", "freeze"]
Phases = list[tuple[int, tuple[str, ...]]]


def _check_names(names: Sequence[str], groups: Sequence[str], where: str) -> None:
    for name in names:
        if name not in groups:
            raise RecipeError(where, f"unknown layer group {name!r}", f"{closest(name, groups)}groups: {', '.join(groups)}")


def _check_count(value: int, groups: Sequence[str], where: str) -> None:
    if value > len(groups):
        raise RecipeError(where, f"{value} is more than the {len(groups)} layer groups ({', '.join(groups)})",
                          f"use at most {len(groups)}")


class _Kind:
    """What every freezing spec offers (the dataclasses below add their fields)."""

    bn_policy: BnPolicy

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        """Raise RecipeError when the spec names groups (or counts) that ``groups`` lacks."""

    def phases_for(self, groups: Sequence[str]) -> Phases:
        """``[(start iteration, frozen group names), ...]`` for the ordered ``groups``."""
        raise NotImplementedError


@dataclass(kw_only=True)
class NoFreezing(_Kind):
    """Everything trainable throughout (training from scratch, or plain fine-tuning)."""

    kind: Literal["none"] = "none"
    bn_policy: BnPolicy = "update"

    def phases_for(self, groups: Sequence[str]) -> Phases:
        return [(0, ())]


@dataclass(kw_only=True)
class FreezeFirst(_Kind):
    """The first ``k`` groups frozen for the whole run (the study's models 1–5), or until iteration
    ``until`` and then everything trained (by position, so the same spec fits any network's groups)."""

    kind: Literal["freeze_first"] = "freeze_first"
    k: int = option(ge=0)
    until: Optional[int] = option(None, ge=1)  # unfreeze everything at this iteration (null: never)
    bn_policy: BnPolicy = "update"

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        _check_count(self.k, groups, f"{where}.k")

    def phases_for(self, groups: Sequence[str]) -> Phases:
        frozen = [(0, tuple(groups[: self.k]))]
        return frozen + [(self.until, ())] if self.until is not None else frozen


@dataclass(kw_only=True)
class WarmupFreezing(_Kind):
    """Train only the ``head`` groups (default: the last group) for ``iterations``, then everything."""

    kind: Literal["warmup"] = "warmup"
    iterations: int = option(ge=1)
    head: Optional[list[str]] = option(None, min_len=1)
    bn_policy: BnPolicy = "update"

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        _check_names(self.head or [], groups, f"{where}.head")

    def phases_for(self, groups: Sequence[str]) -> Phases:
        head = self.head if self.head is not None else list(groups[-1:])
        return [(0, tuple(g for g in groups if g not in head)), (self.iterations, ())]


@dataclass(kw_only=True)
class GradualFreezing(_Kind):
    """Gradual unfreezing: the first ``start_frozen`` groups frozen (default: all but the head), one
    more group unfrozen, from the top down, every ``every`` iterations."""

    kind: Literal["gradual"] = "gradual"
    every: int = option(ge=1)
    start_frozen: Optional[int] = option(None, ge=0)
    bn_policy: BnPolicy = "update"

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        if self.start_frozen is not None:
            _check_count(self.start_frozen, groups, f"{where}.start_frozen")

    def phases_for(self, groups: Sequence[str]) -> Phases:
        k = len(groups) - 1 if self.start_frozen is None else self.start_frozen
        return [(step * self.every, tuple(groups[: k - step])) for step in range(k + 1)]


@dataclass(kw_only=True)
class FreezingPhases(_Kind):
    """Explicit phases ``{start iteration: [frozen groups]}``; the first starts at 0.

    ``[[start, [groups]], ...]`` (what :meth:`FreezingSchedule.to_spec` writes) is read too.
    """

    kind: Literal["phases"] = "phases"
    phases: Union[dict[int, list[str]], list[tuple[int, list[str]]]] = option(min_len=1)
    bn_policy: BnPolicy = "update"

    def validate(self, where: str) -> None:
        items = list(self.phases.items()) if isinstance(self.phases, dict) else list(self.phases)
        starts = [start for start, _ in items]
        if len(set(starts)) != len(starts):
            raise RecipeError(f"{where}.phases", f"two phases start at the same iteration: {sorted(starts)}", "merge them")
        if min(starts) != 0:
            raise RecipeError(f"{where}.phases", "the first phase must start at iteration 0",
                              "add a phase for iteration 0 (e.g. 0: [] for nothing frozen)")
        self.phases = dict(sorted((start, list(groups)) for start, groups in items))

    def check_groups(self, groups: Sequence[str], where: str) -> None:
        for start, frozen in self.phases.items():  # type: ignore[union-attr]
            _check_names(frozen, groups, f"{where}.phases.{start}")

    def phases_for(self, groups: Sequence[str]) -> Phases:
        return [(start, tuple(frozen)) for start, frozen in self.phases.items()]  # type: ignore[union-attr]


FreezingSpec = Union[NoFreezing, FreezeFirst, WarmupFreezing, GradualFreezing, FreezingPhases]
FREEZING_KINDS: tuple[str, ...] = tuple(tagged_union(FreezingSpec)[1])  # type: ignore[index]


def parse_freezing_spec(spec: Any, where: str = "freezing") -> FreezingSpec:
    """A typed spec from a recipe mapping (``None`` → nothing frozen) or from a typed spec."""
    if spec is None:
        return NoFreezing()
    return from_dict(FreezingSpec, spec, where)  # type: ignore[arg-type]


__all__ = ["FreezingSpec", "NoFreezing", "FreezeFirst", "WarmupFreezing", "GradualFreezing", "FreezingPhases",
           "FREEZING_KINDS", "parse_freezing_spec"]
