"""A checkpoint's preprocessing spec as MONAI dictionary transforms (the ``preprocessing`` of a bundle).

Each step of :class:`~vol_transfer.preprocessing.pipeline.Preprocessor` becomes MONAI transforms in
the same order (orient, crop, intensity, resample, pad), written as bundle-config dicts
(``{"_target_": "Orientationd", ...}``) so MONAI's ``ConfigParser`` builds them; MONAI's
``Invertd`` then undoes the spatial ones on the prediction, as our ``SpatialInverse`` does.

| our step | MONAI | equal? |
|---|---|---|
| ``orientation`` | ``Orientationd`` (both plan with nibabel's ``io_orientation``) | exactly |
| ``crop_foreground: m`` | ``CropForegroundd(margin=m, allow_smaller=True)``; ``select_fn`` is our foreground (differs from the border's most common value, any channel; nothing found → no crop) | exactly |
| ``zscore`` ``nonzero`` / ``all`` | ``NormalizeIntensityd(nonzero=True/False, channel_wise=True)`` | float32 rounding |
| ``zscore`` ``foreground`` | ``Lambdad`` (subtract the border background) + ``NormalizeIntensityd(nonzero=True)`` | float32 rounding |
| ``zscore`` ``threshold: t`` | ``ShiftIntensityd(-t)`` + ``ThresholdIntensityd(0, above=True)`` + ``NormalizeIntensityd(nonzero=True)`` | float32 rounding |
| ``percentile_clip`` | ``ClipIntensityPercentilesd(channel_wise=True)`` | float32 rounding (both linear percentiles) |
| ``hu_window`` / ``scale_uint8`` | ``ScaleIntensityRanged`` | float32 rounding |
| ``scale_by_max`` | ``Lambdad`` (no MONAI transform divides by max ``abs``) | exactly |
| ``spacing`` | ``Spacingd(mode="bilinear")`` | **no**: see below |
| ``min_size`` | ``SpatialPadd(method="symmetric")`` | exactly |

A step limited to some ``channels`` runs between ``SplitDimd`` and ``ConcatItemsd``.

Where equality is impossible: ``Spacingd`` keeps the first voxel centre and interpolates
trilinearly, as ours (SimpleITK) does, and the voxels both grids share agree to float rounding
(measured: 6e-8 of the maximum on an MSD hippocampus case at 1.5, 0.8×1.2×2 and 0.7 mm), but it
sizes the grid from the distance between the first and last voxel centres where ours rounds
``n × spacing / new spacing``, so an axis can have one voxel more or fewer at its far end. The
network then sees other context within its receptive field of that face, and labels can differ
there (and only there). Rounding elsewhere: MONAI computes z-score statistics in float32, ours in
float64 (≈1e-7 relative, measured by :func:`vol_transfer.export.check.check_bundle_preprocessing`).
``scale_by_max`` along a ``slice_axis`` (a 2-D step) has no bundle form and is refused.

Example:
    >>> from vol_transfer.preprocessing.pipeline import Preprocessor
    >>> spec = {"orientation": "RAS", "intensity": [{"kind": "zscore", "mask": "nonzero"}]}
    >>> translation = monai_preprocessing(Preprocessor.from_spec(spec), num_channels=2)
    >>> [t["_target_"] for t in translation.transforms]
    ['LoadImaged', 'Orientationd', 'NormalizeIntensityd', 'EnsureTyped']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vol_transfer.errors import RecipeError
from vol_transfer.preprocessing.intensity import resolve_window
from vol_transfer.preprocessing.intensity_steps import (
    HUWindow,
    IntensityStep,
    PercentileClip,
    ScaleByMax,
    ScaleUint8,
    ZScore,
)
from vol_transfer.preprocessing.pipeline import Preprocessor

KEY = "image"
# Bundle-config items the transforms refer to (``@border_background``): the most common value on
# the faces of one (X, Y, Z) channel, smallest on ties — vol_transfer.preprocessing.intensity.border_background.
HELPERS = {
    "border_background": "$lambda c: (lambda values, counts: values[counts.argmax()])(*torch.unique(torch.cat(["
                         "c[0].flatten(), c[-1].flatten(), c[:, 0].flatten(), c[:, -1].flatten(), "
                         "c[:, :, 0].flatten(), c[:, :, -1].flatten()]), return_counts=True))",
    "foreground": "$lambda x: (lambda m: m if m.any() else torch.ones_like(m))("
                  "torch.stack([c != @border_background(c) for c in x]).any(0, keepdim=True))",
}
_SHIFT_TO_BACKGROUND = "$lambda x: x - torch.stack([@border_background(c) for c in x]).reshape(-1, 1, 1, 1)"
_SCALE_BY_MAX = "$lambda x: torch.stack([c / m if (m := c.abs().max()) > 0 else c for c in x])"


@dataclass
class MonaiPreprocessing:
    """Bundle-config transforms for ``KEY``, the helper items they use, and what is not exact."""

    transforms: list[dict[str, Any]]
    helpers: dict[str, str] = field(default_factory=lambda: dict(HELPERS))
    notes: list[str] = field(default_factory=list)


def _intensity(step: IntensityStep, keys: list[str], where: str) -> list[dict[str, Any]]:
    if isinstance(step, ZScore):
        normalise = {"_target_": "NormalizeIntensityd", "keys": keys, "nonzero": step.mask != "all",
                     "channel_wise": True}
        if step.mask == "foreground":
            return [{"_target_": "Lambdad", "keys": keys, "func": _SHIFT_TO_BACKGROUND}, normalise]
        if step.mask == "threshold":
            shift = [{"_target_": "ShiftIntensityd", "keys": keys, "offset": -step.threshold}] if step.threshold else []
            return [*shift, {"_target_": "ThresholdIntensityd", "keys": keys, "threshold": 0.0, "above": True,
                             "cval": 0.0}, normalise]
        return [normalise]
    if isinstance(step, PercentileClip):
        return [{"_target_": "ClipIntensityPercentilesd", "keys": keys, "lower": step.lower, "upper": step.upper,
                 "channel_wise": True}]
    if isinstance(step, HUWindow):
        low, high = resolve_window(step.window)
        return [{"_target_": "ScaleIntensityRanged", "keys": keys, "a_min": low, "a_max": high, "b_min": 0.0,
                 "b_max": 1.0, "clip": True}]
    if isinstance(step, ScaleUint8):
        return [{"_target_": "ScaleIntensityRanged", "keys": keys, "a_min": 0.0, "a_max": 255.0, "b_min": 0.0,
                 "b_max": 1.0, "clip": False}]
    if isinstance(step, ScaleByMax):
        if step.slice_axis is not None:
            raise RecipeError(f"{where}.slice_axis", "scale_by_max per slice is a 2-D step with no MONAI bundle form",
                              "export this checkpoint as torchscript or onnx")
        return [{"_target_": "Lambdad", "keys": keys, "func": _SCALE_BY_MAX}]
    raise RecipeError(where, f"intensity step {step.kind!r} has no MONAI form", "export as torchscript or onnx")


def _on_channels(transforms: list[dict[str, Any]], channels: list[int], num_channels: int,
                 where: str) -> list[dict[str, Any]]:
    """Run ``transforms`` (written for ``KEY``) on some channels only: split, transform, concatenate."""
    bad = [c for c in channels if c >= num_channels]
    if bad:
        raise RecipeError(f"{where}.channels", f"channel(s) {bad} do not exist (the model has {num_channels})",
                          f"use indices 0..{num_channels - 1}")
    parts = [f"{KEY}_{i}" for i in range(num_channels)]
    chosen = [f"{KEY}_{i}" for i in channels]
    for transform in transforms:
        transform["keys"] = chosen
    return [{"_target_": "SplitDimd", "keys": KEY, "output_postfixes": [str(i) for i in range(num_channels)],
             "dim": 0, "keepdim": True, "list_output": False},
            *transforms,
            {"_target_": "ConcatItemsd", "keys": parts, "name": KEY, "dim": 0},
            {"_target_": "DeleteItemsd", "keys": parts}]


def monai_preprocessing(preprocessor: Preprocessor, num_channels: int) -> MonaiPreprocessing:
    """MONAI transforms doing ``preprocessor``'s steps on ``data["image"]`` (see the module table)."""
    transforms: list[dict[str, Any]] = [{"_target_": "LoadImaged", "keys": KEY, "ensure_channel_first": True,
                                         "image_only": True, "dtype": "$numpy.float32"}]
    notes: list[str] = []
    if preprocessor.orientation is not None:
        # labels given: nibabel's axis codes (RAS = +x right …), as ours, whatever reader made the image
        transforms.append({"_target_": "Orientationd", "keys": KEY, "axcodes": preprocessor.orientation,
                           "labels": [["L", "R"], ["P", "A"], ["I", "S"]]})
    if preprocessor.crop_foreground is not None:
        transforms.append({"_target_": "CropForegroundd", "keys": KEY, "source_key": KEY,
                           "select_fn": "@foreground", "margin": preprocessor.crop_foreground,
                           "allow_smaller": True})
    for index, step in enumerate(preprocessor.intensity):
        where = f"preprocessing.intensity[{index}]"
        steps = _intensity(step, [KEY], where)
        if step.channels is not None and sorted(set(step.channels)) != list(range(num_channels)):
            steps = _on_channels(steps, list(step.channels), num_channels, where)
        transforms.extend(steps)
    if preprocessor.spacing is not None:
        transforms.append({"_target_": "Spacingd", "keys": KEY, "pixdim": list(preprocessor.spacing),
                           "mode": "bilinear"})
        notes.append("spacing: MONAI's Spacingd and vol_transfer agree on the voxels both grids share (float "
                     "rounding), but Spacingd sizes its grid from the first-to-last voxel distance where "
                     "vol_transfer rounds n x spacing / new spacing, so an axis can have one voxel more or fewer "
                     "at its far end, and labels within the network's receptive field of that face can differ")
    if preprocessor.min_size is not None:
        transforms.append({"_target_": "SpatialPadd", "keys": KEY, "spatial_size": list(preprocessor.min_size),
                           "method": "symmetric", "mode": "constant"})
    transforms.append({"_target_": "EnsureTyped", "keys": KEY, "dtype": "$torch.float32"})
    return MonaiPreprocessing(transforms, notes=notes)


def build_monai_preprocessing(translation: MonaiPreprocessing):
    """The MONAI ``Compose`` the bundle config describes, built by MONAI's ``ConfigParser``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({**translation.helpers, "preprocessing": {"_target_": "Compose",
                                                                    "transforms": translation.transforms}})
    return parser.get_parsed_content("preprocessing")


__all__ = ["MonaiPreprocessing", "monai_preprocessing", "build_monai_preprocessing", "HELPERS", "KEY"]
