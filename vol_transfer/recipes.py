"""Recipes: YAML files turned into typed, validated configuration objects.

A recipe is a YAML mapping whose top-level ``task:`` names a registered task (``segmentation``,
``classification``, ``pretext`` …). Each task registers a dataclass describing its sections; the
rest of the recipe is validated against it by :func:`from_dict`, which reports unknown keys (with
the closest valid key), wrong types and impossible values as one-line :class:`RecipeError`\\ s
naming the dotted key.

``extends: base.yaml`` (or a list of files) is resolved relative to the recipe that names it,
recursively, and deep-merged: the extending file wins, mappings merge key by key, everything else
is replaced. ``--set key.sub=value`` overrides are applied last; their values are parsed as YAML
(``--set optim.lr=3e-4``, ``--set data.splits=[train]``, ``--set network.options=null``).

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

Registering a task (done once, in the module that implements it)::

    register_task("segmentation", SegmentationConfig, run_segmentation)
    task, config = resolve_recipe("recipes/hippocampus_pretrain_cpu.yaml", ["iterations=10"])
    get_task(task).run(config, run_dir)
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
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
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise RecipeError(_key(where, str(key)), "unknown key",
                              f"{hint}valid keys: {', '.join(fields) or '(none)'}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _key(where, name)
        if name in data:
            value = _convert(hints[name], data[name], key)
            _check_constraints(f, value, key)
            values[name] = value
        elif f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
            raise RecipeError(key, "required key is missing", f"add '{name}:' to {where or 'the recipe'}")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(where)
    return instance


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _wrong_type(where, tp, value)
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
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(where, f"{_value_text(value)} is not allowed",
                          f"{hint}choose one of {', '.join(repr(a) for a in args)}")

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


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge by key, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
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


def load_recipe_dict(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and everything it ``extends``, deep-merged, without validating it."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " → ".join(p.name for p in (*_chain, resolved))
        raise RecipeError(path, f"'extends' forms a cycle ({cycle})", "remove one of the 'extends' entries")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise RecipeError(f"{path}: extends", "expected a file name or a list of file names",
                          "write 'extends: base.yaml' (relative to this recipe)")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = deep_merge(merged, load_recipe_dict(path.parent / parent, (*_chain, resolved)))
    return deep_merge(merged, data)


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


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set key.sub=value`` overrides to a copy of the recipe data."""
    result = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise RecipeError(f"--set {text}", f"'{where}' is a single value, not a section",
                                  f"set {where}=VALUE instead")
            node = child
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A recipe task: its config dataclass and ``run(config, run_dir, **options) -> dict`` function."""

    name: str
    config_cls: type
    run: Callable[..., Any]


_TASKS: dict[str, TaskSpec] = {}
# Where a task lives: vol_transfer.training.<task name> by convention, or listed here; imported on first use.
_TASK_PACKAGE = "vol_transfer.training"
_TASK_MODULES = {"study": "vol_transfer.studies.plan"}


def register_task(name: str, config_cls: type, run_fn: Callable[..., Any]) -> TaskSpec:
    """Register (or replace) the task that recipes select with ``task: <name>``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_task({name!r}): config_cls must be a dataclass")
    spec = TaskSpec(name, config_cls, run_fn)
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
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RecipeError(where, f"unknown task {name!r}", f"{hint}known tasks: {', '.join(known) or '(none)'}")
    return _TASKS[name]


def resolve_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[str, Any]:
    """Read, extend, override and validate a recipe → ``(task name, typed config)``."""
    data = apply_overrides(load_recipe_dict(path), overrides)
    if "task" not in data:
        raise RecipeError(f"{path}: task", "required key is missing",
                          f"add e.g. 'task: segmentation' (known: {', '.join(registered_tasks())})")
    task_name = data.pop("task")
    spec = get_task(task_name, where=f"{path}: task")
    try:
        config = from_dict(spec.config_cls, data)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error.where}", error.problem, error.fix) from None
    return task_name, config
