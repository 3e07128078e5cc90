"""Declarative label remapping: merge or renumber label values with a mapping or a named preset.

A mapping lists every value that is kept (``{source: target}``); any value not listed becomes
``default`` (0, background). So BRATS 2015 tumour core is ``{1: 1, 3: 1, 4: 1}``: oedema (2) → 0.

Example:
    >>> import numpy as np
    >>> remap_labels(np.array([0, 1, 2, 3, 4]), "brats_tc_2015").tolist()
    [0, 1, 0, 1, 1]
    >>> remap_labels(np.array([0, 1, 2]), {1: 1, 2: 1}).tolist()
    [0, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import numpy as np

from vol_transfer.errors import RecipeError
from vol_transfer.io.case import label_array


@dataclass(frozen=True)
class LabelPreset:
    """A named remapping and the class names of its output values (index = value)."""

    mapping: dict[int, int]
    classes: tuple[str, ...]
    description: str = ""


LABEL_PRESETS: dict[str, LabelPreset] = {
    "brats_tc_2015": LabelPreset(
        {1: 1, 3: 1, 4: 1}, ("background", "tumour_core"),
        "BRATS 2013/2015 numbering: necrosis 1 + non-enhancing 3 + enhancing 4 → tumour core",
    ),
    "brats_tc_2017": LabelPreset(
        {1: 1, 4: 1}, ("background", "tumour_core"),
        "BraTS 2017+ numbering: necrotic/non-enhancing core 1 + enhancing 4 → tumour core",
    ),
    "brats_wt_2017": LabelPreset(
        {1: 1, 2: 1, 4: 1}, ("background", "whole_tumour"), "BraTS 2017+: every tumour label → whole tumour",
    ),
    "hippocampus": LabelPreset(
        {1: 1, 2: 2}, ("background", "anterior", "posterior"), "MSD Task04: head 1 and body 2 kept apart",
    ),
    "hippocampus_merged": LabelPreset(
        {1: 1, 2: 1}, ("background", "hippocampus"), "MSD Task04: head and body merged",
    ),
}

MappingSpec = Union[str, Mapping[int, int], Mapping[str, int], None]


def resolve_mapping(mapping: MappingSpec) -> dict[int, int] | None:
    """A preset name or a ``{source: target}`` dict (keys may be strings, as in JSON) → int dict."""
    if mapping is None:
        return None
    if isinstance(mapping, str):
        if mapping not in LABEL_PRESETS:
            raise RecipeError("label_mapping", f"unknown label preset {mapping!r}",
                              f"use one of {', '.join(LABEL_PRESETS)} or a {{source: target}} mapping")
        return dict(LABEL_PRESETS[mapping].mapping)
    try:
        return {int(k): int(v) for k, v in mapping.items()}
    except (TypeError, ValueError, AttributeError):
        raise RecipeError("label_mapping", f"{mapping!r} is not a mapping of integer labels",
                          "write it as {source: target}, e.g. {1: 1, 3: 1, 4: 1}") from None


def remap_labels(array: np.ndarray, mapping: MappingSpec, default: int = 0) -> np.ndarray:
    """Return a copy of ``array`` with values renumbered by ``mapping`` (unlisted values → ``default``).

    ``mapping=None`` returns the labels unchanged (as a copy). Values are checked by
    :func:`vol_transfer.io.case.label_array` (the one label-array path).
    """
    table = resolve_mapping(mapping)
    data = np.asarray(array)
    if table is None or data.size == 0:
        return data.copy()
    data = label_array(data, "labels", keep_shape=True)  # whole, non-negative numbers (InputDataError otherwise)
    high = int(data.max())
    out_max = max([default, *table.values()])
    dtype = np.uint8 if out_max < 256 else np.int32
    lookup = np.full(max(high, *table.keys()) + 1, default, dtype=dtype)
    for source, target in table.items():
        lookup[source] = target
    return lookup[data]
