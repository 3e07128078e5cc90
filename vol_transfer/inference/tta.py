"""Which flips test-time augmentation may average: only those the model was trained with.

A model trained without flips has never seen a mirrored image; averaging its prediction over
mirrored copies can lose most of its Dice (hippocampus: anterior and posterior swap places).
The checkpoint keeps the resolved recipe, so ``metadata["recipe"]["sampler"]["augmentation"]``
says which axes were flipped in training; older or imported checkpoints do not say.

Example:
    >>> recipe = {"sampler": {"augmentation": {"enabled": True, "flip_axes": [0]}}}
    >>> training_flip_axes({"recipe": recipe}), training_flip_axes({"recipe": None})
    ((0,), None)
    >>> tta_options(InferenceOptions(tta=True), {"recipe": recipe}, "hippo.pt", print).flip_axes
    tta: hippo.pt was trained with flips along axis 0: --tta averages the identity and those flips
    (0,)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

from vol_transfer.errors import RecipeError
from vol_transfer.inference.predict import InferenceOptions

FLIPS_KEY = "sampler.augmentation.flip_axes"


def training_flip_axes(metadata: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The spatial axes the training augmentation flipped (``()``: none), or None if unrecorded."""
    recipe = metadata.get("recipe")
    augmentation = recipe.get("sampler", {}).get("augmentation") if isinstance(recipe, Mapping) else None
    if not isinstance(augmentation, Mapping) or "flip_axes" not in augmentation:
        return None
    if not augmentation.get("enabled", True):
        return ()
    return tuple(sorted({int(axis) for axis in augmentation["flip_axes"] or ()}))


def tta_options(options: InferenceOptions, metadata: Mapping[str, Any], where: str,
                say: Callable[[str], None]) -> InferenceOptions:
    """``options`` with ``flip_axes`` set to the training flips when ``tta`` is on.

    Raises :class:`RecipeError` when the model was trained without any flip; warns (through
    ``say``) and keeps all three axes when the checkpoint does not record its augmentation.
    """
    if not options.tta:
        return options
    axes = training_flip_axes(metadata)
    if axes is None:
        say(f"warning: {where} does not record its training augmentation (an older or imported checkpoint), so "
            "--tta averages flips along all three axes; if the model never saw flipped images this lowers its "
            "accuracy — check the Dice with and without --tta")
        return replace(options, flip_axes=(0, 1, 2))
    if not axes:
        raise RecipeError(where, f"was trained without flips ({FLIPS_KEY} is empty or augmentation is off), so "
                                 "--tta would average mirrored views the model never saw and lower its accuracy",
                          f"drop --tta, or retrain with {FLIPS_KEY} set (e.g. [0])")
    say(f"tta: {where} was trained with flips along axis {', '.join(map(str, axes))}: --tta averages the identity "
        "and those flips")
    return replace(options, flip_axes=axes)
