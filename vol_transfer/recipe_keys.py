"""Every key a recipe may set, read from the typed schema: its type, default and one line of meaning.

The walk follows :mod:`vol_transfer.recipes`: a dataclass field is a key, a nested dataclass a
section, a tagged union (``transfer.freezing``, ``network``, ``preprocessing.intensity`` steps) lists
its tag with the kinds to choose from and then each kind's own options, and a list of tagged
items is written ``key[].option``. A key's meaning is, first that exists: the field's
``option(help=...)``; the comment beside the field or just above it in the dataclass's source; the
nested section's docstring; a line from :data:`MEANINGS`.

Example:
    >>> from vol_transfer.training.segmentation_config import SegmentationConfig
    >>> keys = {k.key: k for k in schema_keys(SegmentationConfig)}
    >>> keys["transfer.freezing.kind"].type
    "'none' | 'freeze_first' | 'warmup' | 'gradual' | 'phases'"
    >>> keys["transfer.freezing.k"].when, keys["transfer.freezing.k"].default
    ('kind: freeze_first', 'required')
    >>> keys["training.iterations"].type, keys["training.iterations"].default
    ('int ≥ 1', '1000')
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vol_transfer.recipes import _field_default, config_to_dict, tagged_union

_MISSING = dataclasses.MISSING

# One line for the keys whose dataclass carries no help text or comment (``Class.field``).
MEANINGS: dict[str, str] = {
    # segmentation
    "SegmentationConfig.description": "free text stored with the run",
    "DataSection.manifest": "manifest CSV of the cases (subject_id, split, channel columns, label)",
    "DataSection.train_split": "manifest split to train on",
    "DataSection.validation_split": "manifest split validated on during training (selects best.pt)",
    "DataSection.fold": "cross-validation fold to validate on (needs a manifest 'fold' column)",
    "DataSection.validation_subjects": "the first N validation cases",
    "SamplerSection.workers": "loader worker processes (0: in the training process)",
    "HighRes3DNetSpec.name": "network",
    "PreprocessingSection.intensity": "intensity steps applied in order (see kind)",
    "SamplerSection.kind": "balanced: windows centred on each class equally often; uniform: anywhere",
    "SamplerSection.padding": "fit: pad volumes up to one window; full: half a window all round",
    "SamplerSection.patches_per_volume": "windows cut from a volume each time it is visited",
    "AugmentationSection.enabled": "augment training windows (rotation, scaling and the options below)",
    "AugmentationSection.flip_axes": "random flips along these array axes (also what infer --tta averages)",
    "AugmentationSection.gamma": "random gamma ± this (log-uniform); null: off",
    "AugmentationSection.noise_std": "Gaussian noise of this SD; null: off",
    "AugmentationSection.bias_field": "random smooth bias field of this strength; null: off",
    "TransferSection.source": "checkpoint to start from (null: random initialisation)",
    "TransferSection.channel_adaptation": "how first-layer weights meet another input-channel count",
    "TransferSection.weight_scale": "init: rescale the source's convolutions to He size, same function (HighRes3DNet)",
    "TransferSection.freezing": "which layer groups are frozen when (see kind)",
    "ScheduleSection.kind": "learning-rate schedule over the run",
    "ScheduleSection.warmup_iterations": "linear warm-up from 0 over this many iterations",
    "ScheduleSection.power": "poly schedule: lr × (1 − t/T)^power",
    "ScheduleSection.min_factor": "cosine/poly floor as a fraction of lr",
    "ScheduleSection.gamma": "step schedule: factor at each milestone",
    "ScheduleSection.milestones": "step schedule: iterations where lr is multiplied by gamma",
    "ScheduleSection.step_size": "step schedule: multiply by gamma every this many iterations",
    "OptimSection.name": "optimizer",
    "OptimSection.lr": "base learning rate",
    "OptimSection.momentum": "SGD momentum",
    "OptimSection.grad_clip": "clip the gradient norm to this; null: no clipping",
    "LossSection.kind": "dice, cross-entropy, or their sum",
    "LossSection.class_weights": "per-class weights of the loss, background first",
    "LossSection.include_background": "count the background class in the Dice loss",
    "TrainingSection.iterations": "optimizer steps in the run",
    "TrainingSection.batch_size": "windows per step (per process)",
    "TrainingSection.window": "training window size in voxels",
    "TrainingSection.seed": "seed of sampling, augmentation and initialisation",
    "TrainingSection.deterministic": "deterministic kernels (reproducible, sometimes slower)",
    "TrainingSection.device": "auto (CUDA when available), cpu, cuda or cuda:N",
    "TrainingSection.threads": "CPU threads for torch (null: torch's default)",
    "TrainingSection.log_every": "iterations between metrics.csv/TensorBoard rows",
    "ValidationSection.every": "iterations between validations (and best.pt updates)",
    "ValidationSection.overlap": "window overlap when validation.window is set",
    "ValidationSection.min_delta": "smallest improvement that counts for patience",
    "CheckpointSection.every": "iterations between last.pt saves (for --resume)",
    "HighRes3DNetOptions.activation": "non-linearity",
    "ZScore.kind": "intensity step",
    "ZScore.mask": "voxels whose mean/SD normalise: nonzero, foreground, above threshold, or all",
    "ZScore.channels": "channel indices to normalise (null: all)",
    "PercentileClip.lower": "lower percentile clipped to",
    "PercentileClip.upper": "upper percentile clipped to",
    "HUWindow.window": "CT window: a preset name or [low, high] in HU",
    "ScaleByMax.slice_axis": "divide each slice along this axis by its maximum (null: the whole volume)",
    "FreezeFirst.k": "number of leading layer groups frozen for the whole run",
    "WarmupFreezing.iterations": "iterations training only the head before everything is unfrozen",
    "WarmupFreezing.head": "groups trained during the warm-up (default: the last group)",
    "GradualFreezing.every": "iterations between unfreezing one more group",
    "GradualFreezing.start_frozen": "groups frozen at the start (default: all but the head)",
    "FreezingPhases.phases": "{start iteration: [frozen groups]}, the first at 0",
    "_Kind.bn_policy": "BatchNorm of frozen groups: update running statistics, or freeze them too",
    "NoFreezing.bn_policy": "BatchNorm of frozen groups: update running statistics, or freeze them too",
    # classification / pretext / images
    "ClassificationConfig.data": "2-D images: manifest, size, channels, subsets",
    "ClassificationConfig.init": "initialise from a checkpoint's encoder",
    "ClassificationConfig.pretrain": "pre-train the encoder first (autoencoder or Models Genesis)",
    "ClassificationConfig.balance": "how class imbalance is handled",
    "ClassificationConfig.epochs": "passes over the training images",
    "ClassificationConfig.batch_size": "images per step",
    "ClassificationConfig.selection_metric": "validation metric that selects best.pt",
    "ClassificationConfig.train_split": "manifest split to train on",
    "ClassificationConfig.validation_split": "manifest split to validate on",
    "ClassificationConfig.seed": "seed of sampling and initialisation",
    "ClassificationConfig.threads": "CPU threads for torch",
    "OptimConfig.name": "optimizer",
    "OptimConfig.lr": "base learning rate",
    "OptimConfig.momentum": "SGD momentum",
    "OptimConfig.weight_decay": "L2 weight decay",
    "OptimConfig.plateau_factor": "lr × this when the selection metric plateaus",
    "OptimConfig.plateau_patience": "epochs without improvement before the lr drops",
    "InitConfig.checkpoint": "checkpoint whose encoder weights initialise the network",
    "InitConfig.prefix": "parameter-name prefix of the encoder inside that checkpoint",
    "InitConfig.rename": "rename the checkpoint's keys from another layout first",
    "ImageDataConfig.manifest": "manifest CSV of the images (path, class, split)",
    "ImageDataConfig.data_root": "folder manifest paths are relative to (null: --data-root, $VOL_TRANSFER_DATA)",
    "ImageDataConfig.subset_seed": "seed of the max_train/max_validation subsets",
    "PretextConfig.method": "pretext task: reconstruct the image, or Models Genesis restoration",
    "PretextConfig.data": "2-D images: manifest, size, channels, subsets",
    "PretextConfig.genesis": "Models Genesis transformations",
    "PretextConfig.epochs": "passes over the images",
    "PretextConfig.batch_size": "images per step",
    "PretextConfig.seed": "seed of the transformations and initialisation",
    "PretextConfig.threads": "CPU threads for torch",
    "GenesisOptions.nonlinear_probability": "probability of a non-linear intensity transform",
    "GenesisOptions.shuffle_probability": "probability of local pixel shuffling",
    "GenesisOptions.paint_probability": "probability of in- or out-painting",
    "GenesisOptions.inpaint_share": "share of paintings that are in-paintings",
    "GenesisOptions.shuffle_block_size": "largest side of a shuffled block",
    "DenseNet121Options.head": "concat_pool: average+max pooling and a hidden layer; monai: MONAI's own head",
    "CBROptions.widths": "channels of each CBR block",
    # study
    "StudyConfig.kind": "freezing ablation, or training-set-size study",
    "StudyConfig.arms": "arms: scratch, model_1 … model_5, or {name, set: [overrides]}",
    "StudyConfig.only": "train and report only these arms, by name, in this order",
    "StudyConfig.seeds": "each arm is trained once per seed",
    "StudyConfig.folds": "cross-validation folds; each arm once per fold",
    "StudyConfig.subset_seed": "seed of the nested training subsets",
    "StudyConfig.threads_per_arm": "CPU threads of each arm (default: the cores shared out)",
    "StudyConfig.evaluate_splits": "splits each arm's best checkpoint is scored on",
    "StudyConfig.title": "report title (default from kind)",
    "CustomArm.name": "the arm's name in tables and folders",
    "CustomArm.set": "recipe overrides (KEY=VALUE) that make this arm",
    "CustomArm.recipe": "this arm's own target recipe (default: the study's recipe:), on the same manifest",
}


@dataclass
class KeyInfo:
    """One recipe key: dotted name, type, default, meaning, and the kind it belongs to (tagged unions)."""

    key: str
    type: str
    default: str
    meaning: str
    when: str = ""


# --------------------------------------------------------------------------------------------
# Types and defaults as text
# --------------------------------------------------------------------------------------------


def type_text(tp: Any) -> str:
    """A short readable type: ``int``, ``'a' | 'b'``, ``list[int]``, ``float | null``, ``mapping``.

    >>> type_text(typing.Optional[list[int]])
    'list[int] | null'
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, collections.abc.Sequence):
        return f"list[{type_text(args[0])}]" if args else "list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{type_text(args[0])}]"
        return f"[{', '.join(type_text(a) for a in args)}]" if args else "list"
    if origin in (dict, collections.abc.Mapping):
        return f"{{{type_text(args[0])}: {type_text(args[1])}}}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    names = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds(meta: typing.Mapping[str, Any]) -> str:
    signs = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
    parts = [f"{sign} {meta[name]}" for name, sign in signs if meta.get(name) is not None]
    if meta.get("choices") is not None:
        parts.append("one of " + ", ".join(repr(c) for c in meta["choices"]))
    if meta.get("min_len") is not None:
        parts.append(f"at least {meta['min_len']} item(s)")
    return " ".join(parts[:2]) if len(parts) == 2 and parts[0][0] in "≥>" and parts[1][0] in "≤<" else ", ".join(parts)


def default_text(value: Any) -> str:
    """``required`` for a missing default, else the value as YAML would show it."""
    if value is _MISSING:
        return "required"
    value = config_to_dict(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if value else "''"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------
# Meanings from the source
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _source_comments(cls: type) -> dict[str, str]:
    """Field → the comment beside it (or the comment lines just above it) in ``cls``'s source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[str, str] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        end = lines[(node.end_lineno or node.lineno) - 1]
        if "#" in end:
            comment = end.rsplit("#", 1)[1].strip()
            if comment and not comment.startswith(("type:", "noqa")):
                comments[node.target.id] = comment
                continue
        above: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        if above:
            comments[node.target.id] = " ".join(above)
    return comments


def plain(text: str) -> str:
    """RST roles and literals as plain text.

    >>> plain(":class:`~vol_transfer.sampling.loader.PatchLoader` with ``kind``")
    'PatchLoader with kind'
    """
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def _doc_line(cls: type) -> str:
    """The first sentence of a class's own docstring ('' for a dataclass without one)."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write when there is no docstring
        return ""
    first = plain(inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ").strip())
    return re.split(r"(?<=[a-z)])\. ", first)[0].rstrip(".")


def _meaning(owner: type, f: dataclasses.Field, tp: Any) -> str:
    if f.metadata.get("help"):
        return plain(str(f.metadata["help"]))
    for cls in owner.__mro__:
        if dataclasses.is_dataclass(cls) or cls.__name__.startswith("_"):
            comment = _source_comments(cls).get(f.name)
            if comment:
                return plain(comment)
            if f"{cls.__name__}.{f.name}" in MEANINGS:
                return MEANINGS[f"{cls.__name__}.{f.name}"]
    inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) else [tp]
    if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
        return _doc_line(inner[0])
    return ""


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None was allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def schema_keys(cls: type, prefix: str = "", when: str = "") -> list[KeyInfo]:
    """Every key of dataclass ``cls`` (sections recursed, tagged unions expanded), in declaration order."""
    keys: list[KeyInfo] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        meaning = _meaning(cls, f, tp)
        default = _field_default(f)
        keys.extend(_keys_of(key, tp, default, meaning, when, f.metadata))
    return keys


def _keys_of(key: str, tp: Any, default: Any, meaning: str, when: str, meta: typing.Mapping[str, Any]) -> list[KeyInfo]:
    inner, nullable = _optional(tp)
    tagged = tagged_union(tp)
    if tagged is not None:
        return _union_keys(key, tp, tagged, default, meaning, when)
    if dataclasses.is_dataclass(inner):
        section = [KeyInfo(key, "mapping" + (" | null" if nullable else ""), "null" if default is None else "(section)",
                           meaning or _doc_line(inner) or "section", when)]
        return section + schema_keys(inner, f"{key}.", when)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin in (list, collections.abc.Sequence) and args and tagged_union(args[0]) is not None:
        head = KeyInfo(key, "list of steps" + (" | null" if nullable else ""), default_text(default), meaning, when)
        return [head, *_union_keys(f"{key}[]", args[0], tagged_union(args[0]), _MISSING, "", when, in_list=True)]
    bounds = _bounds(meta)
    return [KeyInfo(key, type_text(tp) + (f" {bounds}" if bounds else ""), default_text(default), meaning, when)]


def _union_keys(key: str, tp: Any, tagged: tuple[str, dict[Any, type]], default: Any, meaning: str, when: str,
                in_list: bool = False) -> list[KeyInfo]:
    tag, members = tagged
    chosen = getattr(default, tag, _MISSING) if default is not _MISSING and default is not None else _MISSING
    noun = "step" if in_list else key.rsplit(".", 1)[-1]
    keys = [KeyInfo(f"{key}.{tag}", " | ".join(repr(v) for v in members), "required" if in_list else default_text(chosen),
                    (meaning if meaning and not in_list else f"which {noun}") + f" — the {tag}s below, then each "
                    "one's options", when)]
    keys += [KeyInfo(f"  {tag}: {value}", "", "", _doc_line(member), when) for value, member in members.items()]
    seen: dict[str, KeyInfo] = {}
    for value, member in members.items():
        for info in schema_keys(member, f"{key}.", when=f"{tag}: {value}"):
            if info.key == f"{key}.{tag}":
                continue
            shared = seen.get(info.key)
            if shared is not None and (shared.type, shared.default) == (info.type, info.default):
                shared.when = f"{tag}: any" if shared.when.count(",") + 2 >= len(members) else f"{shared.when}, {value}"
                continue
            seen[info.key] = info
            keys.append(info)
    for info in keys[1 + len(members):]:
        if info.when.count(",") + 1 == len(members):
            info.when = f"{tag}: any"
    return keys


# --------------------------------------------------------------------------------------------
# For a recipe file
# --------------------------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict) and value:
                out.update(_flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out
    return {}


def recipe_values(config: Any) -> dict[str, Any]:
    """Dotted key → the value a resolved recipe gives it (lists of steps kept whole)."""
    return _flatten(config_to_dict(config))


def format_keys(keys: list[KeyInfo], values: dict[str, Any] | None = None) -> str:
    """A plain-text table: key, type, default (and this recipe's value), kind, meaning."""
    header = ["key", "type", "default"] + (["this recipe"] if values is not None else []) + ["meaning"]
    rows = []
    for k in keys:
        row = [k.key, k.type, k.default]
        if values is not None:
            row.append(default_text(values[k.key]) if k.key in values else "")
        meaning = k.meaning + (f"  [{k.when}]" if k.when and not k.when.endswith(": any") else "")
        rows.append(row + [meaning])
    widths = [min(max(len(r[i]) for r in [header, *rows]), cap) for i, cap in enumerate([38, 34, 22, 22][: len(header) - 1])]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells[:-1], widths)) + "  " + cells[-1]

    return "\n".join([line(header), line(["-" * w for w in widths] + ["-" * 7]), *(line(r) for r in rows)])
