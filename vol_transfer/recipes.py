"""Recipes: YAML files turned into typed, validated configuration objects.

A recipe is a YAML mapping whose top-level ``task:`` names a registered task (``segmentation``,
``classification``, ``pretext`` …). Each task registers a dataclass describing its sections; the
rest of the recipe is validated against it by :func:`from_dict`, which reports unknown keys (with
the closest valid key), wrong types and impossible values as one-line :class:`RecipeError`\\ s
naming the dotted key.

A section whose options depend on its ``kind`` is a *tagged union*: a ``Union`` of dataclasses that
each fix one shared ``Literal`` field (``kind``, or ``name`` for networks) to their own value. The
value's tag chooses the dataclass (an unknown tag is refused with the closest valid one); a
missing tag means the field's default kind; that dataclass then refuses keys it does not have,
naming the kind they belong to. ``transfer.freezing`` (:mod:`vol_transfer.transfer.freezing_spec`),
``preprocessing.intensity`` steps and ``network`` (:mod:`vol_transfer.training.network_spec`) are
typed this way, so the whole recipe is checked before any data is read.

``extends: base.yaml`` (or a list of files) is resolved relative to the recipe that names it,
recursively, and deep-merged: the extending file wins, mappings merge key by key, everything else
is replaced. ``--set key.sub=value`` overrides are applied last; their values are parsed as YAML
(``--set optim.lr=3e-4``, ``--set data.splits=[train]``, ``--set network.options=null``).

Changing the kind of a tagged union starts that sub-spec over, in an extending file and with
``--set`` alike: the options of the old kind are dropped, options every kind has with the same
type (``bn_policy`` of a freezing schedule) carry over, and so do keys the same command line set
with ``--set``. So a base ``freezing: {kind: freeze_first, k: 2}`` extended by
``freezing: {kind: warmup, iterations: 100}`` is a warm-up without a stray ``k``, and
``--set transfer.freezing.kind=warmup --set transfer.freezing.iterations=100`` means the same in
either order. The rule needs the recipe's schema, so it applies to recipes whose ``task:`` names a
registered task (plain :func:`deep_merge` without a ``schema`` merges key by key); ``kind`` keys of
plain sections (``sampler.kind``, ``loss.kind``) merge as before.

Relative paths inside a recipe are kept as written and resolved against the working directory
when used (the shipped recipes assume the project root).

Example:
    >>> @dataclass
    ... class Optim:
    ...     lr: float = option(1e-3, gt=0)
    ...     name: Literal["adam", "sgd"] = "adam"
    >>> from_dict(Optim, {"lr": 3e-4}).lr
    0.0003
    >>> from_dict(Optim, {"lrr": 1}, where="optim")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: optim.lrr: unknown key — did you mean 'lr'? valid keys: lr, name

A tagged union, the dataclass chosen by ``kind``:
    >>> @dataclass(kw_only=True)
    ... class Constant:
    ...     kind: Literal["constant"] = "constant"
    >>> @dataclass(kw_only=True)
    ... class Step:
    ...     kind: Literal["step"] = "step"
    ...     every: int = option(ge=1)
    >>> from_dict(typing.Union[Constant, Step], {"kind": "step", "every": 100}, "schedule")
    Step(kind='step', every=100)
    >>> from_dict(typing.Union[Constant, Step], {"kind": "stpe"}, "schedule")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: schedule.kind: 'stpe' is not allowed — did you mean 'step'? choose one of 'constant', 'step'
    >>> from_dict(typing.Union[Constant, Step], {"kind": "constant", "every": 100}, "schedule")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: schedule.every: is not an option of kind 'constant' — it belongs to kind 'step': set schedule.kind to that, or drop every (options of kind 'constant': kind)

Registering a task (done once, in the module that implements it)::

    register_task("segmentation", SegmentationConfig, run_segmentation)
    task, config = resolve_recipe("recipes/hippocampus_pretrain_cpu.yaml", ["training.iterations=10"])
    get_task(task).run(config, run_dir)

A study recipe (``task: study``) is run by ``vol-transfer study``; :func:`resolve_recipe` refuses a
recipe whose task belongs to another command than the one asking (``command="train"`` by default).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import functools
import importlib
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import yaml

from vol_transfer.errors import RecipeError

__all__ = [
    "option",
    "from_dict",
    "closest",
    "tagged_union",
    "config_to_dict",
    "load_recipe_dict",
    "apply_overrides",
    "deep_merge",
    "TaskSpec",
    "register_task",
    "get_task",
    "registered_tasks",
    "resolve_recipe",
    "recipe_to_yaml",
    "RecipeError",
]

_MISSING = dataclasses.MISSING
RESERVED_KEYS = ("task", "extends")


# --------------------------------------------------------------------------------------------
# Field constraints
# --------------------------------------------------------------------------------------------


def option(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    min_len: int | None = None,
    check: Callable[[Any], str | None] | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with value constraints checked by :func:`from_dict`.

    ``ge/gt/le/lt`` bound numbers (and every number inside a list/tuple); ``choices`` restricts
    the value; ``min_len`` bounds list length; ``check(value)`` returns a problem text or None.
    """
    metadata = {
        "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
        "min_len": min_len, "check": check, "help": help,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)):
        frozen = copy.deepcopy(default)
        return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _key(where: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else str(name)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", Path: "a path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _value_text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(value: Any, choices: Sequence[Any]) -> str:
    """``"did you mean 'x'? "`` for the valid choice closest to ``value``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _wrong_type(where: str, tp: Any, value: Any) -> RecipeError:
    return RecipeError(
        where,
        f"expected {_type_name(tp)}, got {_value_text(value)} ({type(value).__name__})",
        f"set {where} to {_type_name(tp)}",
    )


# --------------------------------------------------------------------------------------------
# Validation: dict → dataclass
# --------------------------------------------------------------------------------------------


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key; raise RecipeError on the first problem.

    ``where`` is the dotted key of ``data`` inside the whole recipe (used in messages). After the
    fields are built, a ``validate(self, where)`` method on the dataclass (if any) runs for checks
    that involve several fields.
    """
    return _convert(cls, data, where)


def _convert_dataclass(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(where or "recipe", f"expected a mapping, got {_value_text(data)}",
                          f"write {where or 'the recipe'} as 'key: value' lines")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise RecipeError(_key(where, str(key)), "unknown key",
                              f"{closest(key, list(fields))}valid keys: {', '.join(fields) or '(none)'}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _key(where, name)
        if name in data:
            default = _field_default(f) if tagged_union(hints[name]) is not None else _MISSING
            value = _convert(hints[name], data[name], key, default)
            _check_constraints(f, value, key)
            values[name] = value
        elif f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
            raise RecipeError(key, "required key is missing", f"add '{name}:' to {where or 'the recipe'}")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(where)
    return instance


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


@functools.lru_cache(maxsize=None)
def tagged_union(tp: Any) -> tuple[str, dict[Any, type]] | None:
    """``(tag field, {tag value: dataclass})`` when ``tp`` is a tagged union, else None.

    A tagged union is a ``Union`` (``None`` allowed) of two or more dataclasses that share a field
    typed ``Literal[<one value>]``, each with its own value: ``kind`` in freezing specs, ``name``
    in network specs. The first such field (in the first dataclass's order) is the tag.
    """
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(members) < 2 or not all(dataclasses.is_dataclass(m) for m in members):
        return None
    hints = [typing.get_type_hints(m) for m in members]
    for name in hints[0]:
        tags = [h.get(name) for h in hints]
        if all(typing.get_origin(t) is Literal and len(typing.get_args(t)) == 1 for t in tags):
            values = [typing.get_args(t)[0] for t in tags]
            if len(set(values)) == len(values):
                return name, dict(zip(values, members))
    return None


def _tag_of(member: type, tag: str) -> Any:
    return typing.get_args(typing.get_type_hints(member)[tag])[0]


def _union_member(tp: Any, value: Any, where: str, default: Any = _MISSING) -> type:
    """The dataclass of tagged union ``tp`` that mapping ``value`` selects (RecipeError if none)."""
    tag, members = tagged_union(tp)  # type: ignore[misc]
    if tag in value:
        return members[_convert(Literal[tuple(members)], value[tag], _key(where, tag))]
    if default is not _MISSING and type(default) in members.values():
        return type(default)
    raise RecipeError(_key(where, tag), "required key is missing",
                      f"add '{tag}:' to {where or 'the recipe'} (one of {', '.join(repr(v) for v in members)})")


def _convert_tagged(tp: Any, value: Mapping, where: str, default: Any) -> Any:
    tag, members = tagged_union(tp)  # type: ignore[misc]
    member = _union_member(tp, value, where, default)
    own = {f.name for f in dataclasses.fields(member)}
    for key in value:
        owners = [repr(v) for v, m in members.items() if m is not member and key in {f.name for f in dataclasses.fields(m)}]
        if key not in own and owners:
            raise RecipeError(_key(where, str(key)), f"is not an option of {tag} {_tag_of(member, tag)!r}",
                              f"it belongs to {tag} {', '.join(owners)}: set {_key(where, tag)} to that, "
                              f"or drop {key} (options of {tag} {_tag_of(member, tag)!r}: {', '.join(sorted(own))})")
    return _convert_dataclass(member, value, where)


def _convert(tp: Any, value: Any, where: str, default: Any = _MISSING) -> Any:
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = config_to_dict(value)  # an already typed section is checked again like its YAML
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _wrong_type(where, tp, value)
        if isinstance(value, Mapping) and tagged_union(tp) is not None:
            return _convert_tagged(tp, value, where, default)
        candidates = [a for a in args if a is not type(None)]
        errors: list[RecipeError] = []
        for candidate in candidates:
            try:
                return _convert(candidate, value, where)
            except RecipeError as error:
                errors.append(error)
        # one candidate (Optional[X]): its own message is the most precise
        if len(candidates) == 1:
            raise errors[0]
        # a mapping given to "X | dataclass": the dataclass's message names the bad key
        for candidate, error in zip(candidates, errors):
            if isinstance(value, Mapping) and dataclasses.is_dataclass(candidate):
                raise error
        raise _wrong_type(where, tp, value)

    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise RecipeError(where, f"{_value_text(value)} is not allowed",
                          f"{closest(value, args)}choose one of {', '.join(repr(a) for a in args)}")

    if origin in (list, collections.abc.Sequence) or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _wrong_type(where, tp, value)
        item_tp = args[0] if args else Any
        return [_convert(item_tp, item, _key(where, i)) for i, item in enumerate(value)]

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(where, tp, value)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item_tp = args[0] if args else Any
            return tuple(_convert(item_tp, item, _key(where, i)) for i, item in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(where, f"expected {len(args)} values, got {len(value)}",
                              f"write {where} as a list of {len(args)} values, e.g. [{', '.join(['…'] * len(args))}]")
        return tuple(_convert(a, item, _key(where, i)) for i, (a, item) in enumerate(zip(args, value)))

    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(where, tp, value)
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            ck = _convert_scalar_key(key_tp, k, _key(where, str(k)))
            out[ck] = _convert(val_tp, v, _key(where, str(k)))
        return out

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong_type(where, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # "1e4" in YAML is a float; an iteration count of 1e4 is meant as 10000
        raise _wrong_type(where, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise RecipeError(where, "value is NaN", f"set {where} to a number")
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _wrong_type(where, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong_type(where, tp, value)
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(os.path.expanduser(str(value)))
        raise _wrong_type(where, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _wrong_type(where, tp, value)
    return value


def _convert_scalar_key(tp: Any, key: Any, where: str) -> Any:
    if tp is int and isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            raise RecipeError(where, f"key {key!r} is not an integer", "use integer keys here") from None
    if tp is str and not isinstance(key, str):
        return str(key)
    return _convert(tp, key, where)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return []


def _check_constraints(f: dataclasses.Field, value: Any, where: str) -> None:
    meta = f.metadata
    if not meta or value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise RecipeError(where, f"{_value_text(value)} is not allowed",
                          f"choose one of {', '.join(repr(c) for c in choices)}")
    min_len = meta.get("min_len")
    if min_len is not None and hasattr(value, "__len__") and len(value) < min_len:
        raise RecipeError(where, f"needs at least {min_len} item(s), got {len(value)}",
                          f"list at least {min_len} value(s) for {where}")
    bounds = [("ge", lambda x, b: x >= b, "≥"), ("gt", lambda x, b: x > b, ">"),
              ("le", lambda x, b: x <= b, "≤"), ("lt", lambda x, b: x < b, "<")]
    for number in _numbers(value):
        for name, ok, sign in bounds:
            bound = meta.get(name)
            if bound is not None and not ok(number, bound):
                raise RecipeError(where, f"value {number!r} is out of range",
                                  f"use a value {sign} {bound}")
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise RecipeError(where, problem, meta.get("help") or f"fix {where}")


# --------------------------------------------------------------------------------------------
# dataclass → plain data (for the resolved recipe in the run folder)
# --------------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> Any:
    """Plain YAML/JSON-serialisable data for a config (dataclasses, Paths and tuples flattened)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {(str(k) if isinstance(k, Path) else k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, os.PathLike):
        return os.fspath(config)
    return config


def recipe_to_yaml(task: str, config: Any) -> str:
    """The fully resolved recipe as YAML text: ``task:`` first, then every section."""
    data = {"task": task, **config_to_dict(config)}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# YAML files, extends and overrides
# --------------------------------------------------------------------------------------------


def _field_schema(schema: Any, key: Any) -> tuple[Any, Any]:
    """The declared type and default of ``key`` inside a mapping of type ``schema`` ((None, MISSING) if unknown)."""
    if typing.get_origin(schema) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(schema) if a is not type(None)]
        schema = inner[0] if len(inner) == 1 else None
    if dataclasses.is_dataclass(schema):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if key in fields:
            return typing.get_type_hints(schema)[key], fields[key]
        return None, _MISSING
    if typing.get_origin(schema) in (dict, collections.abc.Mapping) and typing.get_args(schema):
        return typing.get_args(schema)[1], _MISSING
    return None, _MISSING


def _selected(tp: Any, mapping: Mapping, field: Any) -> type | None:
    """The dataclass of tagged union ``tp`` that ``mapping`` selects, or None (not a union, unknown tag)."""
    tagged = tagged_union(tp)
    if tagged is None:
        return None
    tag, members = tagged
    if tag in mapping:
        value = mapping[tag]
        return members.get(value) if isinstance(value, collections.abc.Hashable) else None
    default = _field_default(field) if isinstance(field, dataclasses.Field) else _MISSING
    return type(default) if type(default) in members.values() else None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _shared_keys(old: Mapping, before: type, after: type, tag: str) -> dict[str, Any]:
    """The entries of ``old`` that both union members have with the same type (carried over a kind change)."""
    a, b = (_field_types(member) for member in (before, after))
    return {k: copy.deepcopy(v) for k, v in old.items() if k != tag and k in a and k in b and a[k] == b[k]}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], schema: Any = None) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge by key, anything else is replaced.

    With ``schema`` (the dataclass the merged mapping will be validated against), a tagged-union
    sub-spec whose kind ``override`` changes starts over (see the module docstring).
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            tp, field = _field_schema(schema, key)
            before = _selected(tp, old, field)
            after = _selected(tp, value, field) if tagged_union(tp) and tagged_union(tp)[0] in value else before
            if before is not None and after is not None and before is not after:
                merged[key] = {**_shared_keys(old, before, after, tagged_union(tp)[0]), **copy.deepcopy(dict(value))}
            else:
                merged[key] = deep_merge(old, value, after or tp)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(path, "recipe file does not exist", "check the path (relative paths in 'extends' are relative to the recipe that names them)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(path, f"is not valid YAML{line}: {problem}", "fix the YAML syntax (indentation, colons, quotes)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(path, f"cannot be read ({error.__class__.__name__})", "check that it is a readable text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(path, f"top level is {type(data).__name__}, not a mapping", "write the recipe as 'key: value' lines")
    return data


def _recipe_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """A recipe file and everything it ``extends``, flattened in merge order (parents first)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " → ".join(p.name for p in (*chain, resolved))
        raise RecipeError(path, f"'extends' forms a cycle ({cycle})", "remove one of the 'extends' entries")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return [data]
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise RecipeError(f"{path}: extends", "expected a file name or a list of file names",
                          "write 'extends: base.yaml' (relative to this recipe)")
    layers = [layer for parent in parents for layer in _recipe_layers(path.parent / parent, (*chain, resolved))]
    return [*layers, data]


def _task_schema(name: Any) -> type | None:
    """The config dataclass of task ``name``, or None when it names no registered task."""
    if not isinstance(name, str) or not name:
        return None
    try:
        return get_task(name).config_cls
    except RecipeError:
        return None


def load_recipe_dict(path: str | os.PathLike, schema: Any = None) -> dict[str, Any]:
    """Read a recipe file and everything it ``extends``, deep-merged, without validating it.

    The merge follows ``schema`` (default: the config dataclass of the recipe's ``task:``), so an
    extending file can replace a sub-spec with one of another kind.
    """
    layers = _recipe_layers(Path(path).expanduser())
    if schema is None:
        schema = _task_schema(next((layer["task"] for layer in reversed(layers) if "task" in layer), None))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer, schema)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` → (["optim", "lr"], 0.0003); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise RecipeError(f"--set {text}", "expected KEY=VALUE with a dotted key", "write e.g. --set optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. "a: b: c"): keep it as a string
    if isinstance(value, str):
        try:
            value = float(value) if _looks_like_float(value) else value
        except ValueError:
            pass
    return [p.strip() for p in parts], value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in ".e") and text.strip().lower() not in ("inf", "-inf", "nan", ".inf")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], schema: Any = None) -> dict[str, Any]:
    """Apply ``--set key.sub=value`` overrides to a copy of the recipe data.

    With ``schema``, setting the tag of a tagged-union sub-spec to another kind drops the old
    kind's options (see the module docstring).
    """
    result = copy.deepcopy(dict(data))
    written: list[tuple[str, ...]] = []  # the keys set so far on this command line
    for text in overrides:
        parts, value = parse_override(text)
        node, tp, field = result, schema, None
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise RecipeError(f"--set {text}", f"'{where}' is a single value, not a section",
                                  f"set {where}=VALUE instead")
            member = _selected(tp, node, field)
            tp, field = _field_schema(member or tp, part)
            node = child
        tagged = tagged_union(tp)
        if tagged is not None and parts[-1] == tagged[0] and isinstance(value, collections.abc.Hashable):
            before, after = _selected(tp, node, field), tagged[1].get(value)
            if before is not None and after is not None and before is not after:
                prefix = tuple(parts[:-1])
                kept = {k: v for k, v in node.items() if (*prefix, k) in {w[: len(prefix) + 1] for w in written}}
                kept = {**_shared_keys(node, before, after, tagged[0]), **kept}
                node.clear()
                node.update(kept)
        node[parts[-1]] = value
        written.append(tuple(parts))
    return result


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A recipe task: its config dataclass, ``run(config, run_dir, **options) -> dict`` function and
    the ``vol-transfer`` command that runs its recipes (``train``, or ``study`` for studies)."""

    name: str
    config_cls: type
    run: Callable[..., Any]
    command: str = "train"


_TASKS: dict[str, TaskSpec] = {}
# Where a task lives: vol_transfer.training.<task name> by convention, or listed here; imported on first use.
_TASK_PACKAGE = "vol_transfer.training"
_TASK_MODULES = {"study": "vol_transfer.studies.plan"}


def register_task(name: str, config_cls: type, run_fn: Callable[..., Any], command: str = "train") -> TaskSpec:
    """Register (or replace) the task that recipes select with ``task: <name>``, run by ``vol-transfer <command>``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_task({name!r}): config_cls must be a dataclass")
    spec = TaskSpec(name, config_cls, run_fn, command)
    _TASKS[name] = spec
    return spec


def _import_task_module(name: str) -> None:
    if not name.isidentifier():
        return
    module_name = _TASK_MODULES.get(name, f"{_TASK_PACKAGE}.{name}")
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:  # the module exists but one of its imports is missing
            raise


def registered_tasks() -> list[str]:
    """Names of the tasks registered so far (known task modules are imported first)."""
    for name in ("segmentation", "classification", "pretext", *_TASK_MODULES):
        if name not in _TASKS:
            try:
                _import_task_module(name)
            except Exception:  # noqa: BLE001 — a broken optional task must not hide the others
                pass
    return sorted(_TASKS)


def get_task(name: str, where: str = "task") -> TaskSpec:
    """The registered task called ``name``; imports ``vol_transfer.training.<name>`` on first use."""
    if not isinstance(name, str) or not name:
        raise RecipeError(where, f"expected a task name, got {_value_text(name)}",
                          f"add e.g. 'task: segmentation' (known: {', '.join(registered_tasks())})")
    if name not in _TASKS:
        _import_task_module(name)
    if name not in _TASKS:
        known = registered_tasks()
        raise RecipeError(where, f"unknown task {name!r}", f"{closest(name, known)}known tasks: {', '.join(known) or '(none)'}")
    return _TASKS[name]


def resolve_recipe(path: str | os.PathLike, overrides: Sequence[str] = (),
                   command: str | None = "train") -> tuple[str, Any]:
    """Read, extend, override and validate a recipe → ``(task name, typed config)``.

    ``command`` is the ``vol-transfer`` command asking (``"train"``, ``"study"``): a recipe of a task
    that another command runs is refused with a pointer to that command; None accepts any task.
    """
    data = load_recipe_dict(path)
    data = apply_overrides(data, overrides, _task_schema(data.get("task")))
    if "task" not in data:
        raise RecipeError(f"{path}: task", "required key is missing",
                          f"add e.g. 'task: segmentation' (known: {', '.join(registered_tasks())})")
    task_name = data.pop("task")
    spec = get_task(task_name, where=f"{path}: task")
    if command is not None and spec.command != command:
        raise RecipeError(f"{path}: task", f"a '{task_name}' recipe is run by 'vol-transfer {spec.command}', "
                          f"not 'vol-transfer {command}'", f"run: vol-transfer {spec.command} {path}")
    try:
        config = from_dict(spec.config_cls, data)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error.where}", error.problem, error.fix) from None
    return task_name, config
