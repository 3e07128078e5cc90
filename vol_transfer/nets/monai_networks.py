"""MONAI's segmentation networks under the transfer toolkit: built by name, with named layer groups.

``build_network({"name": "monai.segresnet", "in_channels": 2, "num_classes": 2, ...})`` builds MONAI's
class with ``spatial_dims``/``in_channels``/``out_channels`` from the config and the remaining keys
as its constructor arguments, and sets ``layer_groups`` on it: the ordered ``group → glob patterns``
map (:mod:`vol_transfer.transfer.groups`) that freezing schedules, discriminative learning rates,
head replacement and channel adaptation read. The groups are the config's ``groups`` (a recipe's
``network.groups``) or the defaults below, built from the same arguments, input to output with the
head last; either way every parameter and buffer must match exactly one group
(:func:`~vol_transfer.transfer.groups.check_partition`).

| network           | default groups (input → output)                                                  |
|-------------------|----------------------------------------------------------------------------------|
| monai.SegResNet   | stem (convInit), enc1…encN (down_layers), dec… (up_samples + up_layers), head    |
| monai.UNet        | stem (model.0), enc1…, bottleneck, dec…, head (model.2, the last up-convolution)  |
| monai.DynUNet     | stem (input_block), enc1… (downsamples), bottleneck, dec… (upsamples), head      |
| monai.SwinUNETR   | stem (patch embedding + encoder1), enc1…enc4 (Swin stages + their conv encoders), |
|                   | dec5…dec1, head (out)                                                            |
| monai.HighResNet  | conv_0, res_1, res_2, res_3, conv_1, conv_2 (the names of our HighRes3DNet)       |

Networks that down-sample need spatial sizes divisible by their total stride; the built model
zero-pads its input up to the next multiple and crops the output back (``size_divisible``), so a
whole validation volume of any size runs. State-dict names are MONAI's own.

Example:
    >>> segresnet_groups({"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]})["enc2"]
    ('down_layers.1.*',)
    >>> list(unet_groups({"channels": [8, 16, 32], "strides": [2, 2]}))
    ['stem', 'enc1', 'bottleneck', 'dec1', 'head']
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import config_to_dict, option

Groups = dict[str, tuple[str, ...]]


# --------------------------------------------------------------------------------------------
# Constructor arguments, typed for recipes (network.options; vol_transfer.training.network_spec)
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SegResNetOptions:
    """``monai.networks.nets.SegResNet`` arguments (Myronenko 2018)."""

    init_filters: int = option(8, ge=1)  # channels of the first level (doubled per level down)
    blocks_down: list[int] = option([1, 2, 2, 4], ge=1, min_len=1)  # residual blocks per level, input first
    blocks_up: list[int] = option([1, 1, 1], ge=1, min_len=1)  # one per up level: len(blocks_down) - 1
    dropout_prob: Optional[float] = option(None, ge=0, lt=1)  # dropout after the first convolution
    act: str = "RELU"  # MONAI activation name (RELU, PRELU, LEAKYRELU …)
    norm: Literal["GROUP", "BATCH", "INSTANCE"] = "GROUP"  # normalisation layer
    num_groups: int = option(8, ge=1)  # GROUP norm only; init_filters must be a multiple
    upsample_mode: Literal["deconv", "nontrainable", "pixelshuffle"] = "nontrainable"  # nontrainable: trilinear
    use_conv_final: bool = True  # the head (norm, act, 1×1×1 conv to the classes); off: no head group

    def check(self, where: str) -> None:
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise RecipeError(f"{where}.blocks_up", f"has {len(self.blocks_up)} levels for {len(self.blocks_down)} "
                              "down levels", f"give {len(self.blocks_down) - 1} values (one fewer than blocks_down)")
        if self.norm == "GROUP" and self.init_filters % self.num_groups:
            raise RecipeError(f"{where}.init_filters", f"{self.init_filters} is not a multiple of num_groups "
                              f"{self.num_groups}", "choose a multiple, or lower num_groups")


@dataclass(kw_only=True)
class UNetOptions:
    """``monai.networks.nets.UNet`` arguments (residual units with ``num_res_units`` > 0)."""

    channels: list[int] = option([16, 32, 64, 128], ge=1, min_len=2)  # per level, input first
    strides: list[int] = option([2, 2, 2], ge=1, min_len=1)  # one per level after the first
    kernel_size: int = option(3, ge=1)  # of the down convolutions
    up_kernel_size: int = option(3, ge=1)  # of the up convolutions
    num_res_units: int = option(0, ge=0)  # residual units per level (0: plain convolutions)
    act: str = "PRELU"  # MONAI activation name
    norm: str = "INSTANCE"  # MONAI normalisation name (INSTANCE, BATCH …)
    dropout: float = option(0.0, ge=0, lt=1)  # dropout probability in every block
    bias: bool = True  # convolution biases

    def check(self, where: str) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise RecipeError(f"{where}.strides", f"has {len(self.strides)} values for {len(self.channels)} channels",
                              f"give {len(self.channels) - 1} strides (one fewer than channels)")


@dataclass(kw_only=True)
class DynUNetOptions:
    """``monai.networks.nets.DynUNet`` arguments (isotropic kernels and strides per level; no deep supervision)."""

    kernel_size: list[int] = option([3, 3, 3, 3], ge=1, min_len=2)  # per level, input first
    strides: list[int] = option([1, 2, 2, 2], ge=1, min_len=2)  # the first level's is usually 1
    upsample_kernel_size: Optional[list[int]] = option(None, ge=1, min_len=1)  # default: strides[1:]
    filters: Optional[list[int]] = option(None, ge=1, min_len=2)  # default: 32, 64, … up to 320 (MONAI)
    dropout: Optional[float] = option(None, ge=0, lt=1)  # dropout probability in every block
    norm_name: str = "INSTANCE"  # MONAI normalisation name
    act_name: str = "LEAKYRELU"  # MONAI activation name
    res_block: bool = False  # residual blocks instead of plain double convolutions
    trans_bias: bool = False  # biases of the transposed convolutions

    def check(self, where: str) -> None:
        if len(self.strides) != len(self.kernel_size):
            raise RecipeError(f"{where}.strides", f"has {len(self.strides)} values for {len(self.kernel_size)} kernel "
                              "sizes", "give one stride per level")
        for key, values, count in (("upsample_kernel_size", self.upsample_kernel_size, len(self.strides) - 1),
                                   ("filters", self.filters, len(self.strides))):
            if values is not None and len(values) != count:
                raise RecipeError(f"{where}.{key}", f"has {len(values)} values", f"give {count}")


@dataclass(kw_only=True)
class SwinUNETROptions:
    """``monai.networks.nets.SwinUNETR`` arguments (windows must be multiples of 32 voxels)."""

    feature_size: int = option(24, ge=12)  # a multiple of 12
    depths: list[int] = option([2, 2, 2, 2], ge=1, min_len=4)  # Swin blocks per stage
    num_heads: list[int] = option([3, 6, 12, 24], ge=1, min_len=4)  # attention heads per stage
    window_size: int = option(7, ge=1)  # attention window, voxels
    norm_name: str = "instance"  # normalisation of the convolutional encoders/decoders
    drop_rate: float = option(0.0, ge=0, lt=1)  # dropout
    attn_drop_rate: float = option(0.0, ge=0, lt=1)  # attention dropout
    dropout_path_rate: float = option(0.0, ge=0, lt=1)  # stochastic depth
    normalize: bool = True  # layer-normalise the Swin outputs
    use_checkpoint: bool = False  # gradient checkpointing (less memory, slower)
    use_v2: bool = False  # SwinUNETR-V2 (a residual conv block before each stage)

    def check(self, where: str) -> None:
        if self.feature_size % 12:
            raise RecipeError(f"{where}.feature_size", f"{self.feature_size} is not a multiple of 12", "use 12, 24, 48 …")
        for key, values in (("depths", self.depths), ("num_heads", self.num_heads)):
            if len(values) != 4:
                raise RecipeError(f"{where}.{key}", f"has {len(values)} values", "give 4, one per Swin stage")


@dataclass(kw_only=True)
class HighResNetOptions:
    """``monai.networks.nets.HighResNet`` arguments (its default layers: the six groups of HighRes3DNet)."""

    norm_type: str = "batch"  # MONAI normalisation name
    acti_type: str = "relu"  # MONAI activation name
    dropout_prob: float = option(0.0, ge=0, lt=1)  # dropout before the last layer
    bias: bool = False  # convolution biases
    channel_matching: Literal["pad", "project"] = "pad"  # how residual shortcuts match channels

    def check(self, where: str) -> None:
        pass



# --------------------------------------------------------------------------------------------
# Default layer groups, from the constructor arguments (no network needed: recipes check them early)
# --------------------------------------------------------------------------------------------


def segresnet_groups(args: Mapping[str, Any]) -> Groups:
    """SegResNet: stem, one group per down level, one per up level (deepest first), head."""
    down = len(args.get("blocks_down", (1, 2, 2, 4)))
    up = len(args.get("blocks_up", (1, 1, 1)))
    groups: Groups = {"stem": ("convInit.*",)}
    groups.update({f"enc{i + 1}": (f"down_layers.{i}.*",) for i in range(down)})
    groups.update({f"dec{up - i}": (f"up_samples.{i}.*", f"up_layers.{i}.*") for i in range(up)})
    if args.get("use_conv_final", True):
        groups["head"] = ("conv_final.*",)
    return groups


def unet_groups(args: Mapping[str, Any]) -> Groups:
    """UNet (nested skip connections): stem, enc1…, bottleneck, dec…, head (the last up-convolution)."""
    levels = len(args.get("channels", (16, 32, 64, 128)))
    prefixes = ["model"]
    for _ in range(levels - 2):
        prefixes.append(f"{prefixes[-1]}.1.submodule")
    groups: Groups = {"stem": ("model.0.*",)}
    groups.update({f"enc{i}": (f"{prefixes[i]}.0.*",) for i in range(1, levels - 1)})
    groups["bottleneck"] = (f"{prefixes[-1]}.1.submodule.*",)
    groups.update({f"dec{i}": (f"{prefixes[i]}.2.*",) for i in reversed(range(1, levels - 1))})
    groups["head"] = ("model.2.*",)
    return groups


def dynunet_groups(args: Mapping[str, Any]) -> Groups:
    """DynUNet: stem (input_block), enc1… (downsamples), bottleneck, dec… (upsamples), head (output_block)."""
    levels = len(args.get("strides", (1, 2, 2, 2)))
    groups: Groups = {"stem": ("input_block.*",)}
    groups.update({f"enc{i + 1}": (f"downsamples.{i}.*",) for i in range(levels - 2)})
    groups["bottleneck"] = ("bottleneck.*",)
    groups.update({f"dec{levels - 1 - i}": (f"upsamples.{i}.*",) for i in range(levels - 1)})
    groups["head"] = ("output_block.*",)
    return groups


def swinunetr_groups(args: Mapping[str, Any]) -> Groups:
    """SwinUNETR: stem, four Swin stages each with the conv encoder of its skip, five decoders, head."""
    groups: Groups = {"stem": ("swinViT.patch_embed.*", "encoder1.*")}
    for stage, encoder in zip(range(1, 5), ("encoder2", "encoder3", "encoder4", "encoder10")):
        groups[f"enc{stage}"] = (f"swinViT.layers{stage}.*", f"{encoder}.*")
    groups.update({f"dec{i}": (f"decoder{i}.*",) for i in (5, 4, 3, 2, 1)})
    groups["head"] = ("out.*",)
    return groups


def highresnet_groups(args: Mapping[str, Any]) -> Groups:
    """MONAI's HighResNet with its default layers: our HighRes3DNet's six groups over ``blocks.N``."""
    blocks = {"conv_0": [0], "res_1": [1, 2, 3], "res_2": [4, 5, 6], "res_3": [7, 8, 9], "conv_1": [10], "conv_2": [11]}
    return {group: tuple(f"blocks.{i}.*" for i in indices) for group, indices in blocks.items()}


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


class _SizeDivisible:
    """Mixin before a MONAI class: zero-pad the input to a multiple of ``size_divisible``, crop the output."""

    size_divisible: tuple[int, ...] = (1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = x.shape[2:]
        pads = [(-size) % divisor for size, divisor in zip(sizes, self.size_divisible)]
        if not any(pads):
            return super().forward(x)  # type: ignore[misc]
        padding = [amount for pad in reversed(pads) for amount in (0, pad)]
        out = super().forward(F.pad(x, padding))  # type: ignore[misc]
        return out[(slice(None), slice(None), *(slice(0, size) for size in sizes))]


@functools.lru_cache(maxsize=None)
def _padded_class(cls: type) -> type:
    return type(cls.__name__, (_SizeDivisible, cls), {"__module__": __name__, "__doc__": cls.__doc__})


def _norm(name: str, num_groups: int | None = None) -> Any:
    return ("GROUP", {"num_groups": num_groups}) if name.upper() == "GROUP" and num_groups else name


def _segresnet(args: dict[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    args = dict(args)
    args["norm"] = _norm(args.pop("norm", "GROUP"), args.pop("num_groups", 8))
    for key in ("blocks_down", "blocks_up"):
        if key in args:
            args[key] = tuple(args[key])
    divisor = 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    return "SegResNet", args, (divisor,) * 3


def _unet(args: dict[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    args = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), **args}
    return "UNet", args, (math.prod(args["strides"]),) * 3


def _dynunet(args: dict[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    args = {"kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], **args}
    if args.get("upsample_kernel_size") is None:
        args["upsample_kernel_size"] = list(args["strides"][1:])
    return "DynUNet", args, (math.prod(args["strides"]),) * 3


def _swinunetr(args: dict[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    return "SwinUNETR", dict(args), (32,) * 3  # patch size 2 × four 2× patch mergings


def _highresnet(args: dict[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    return "HighResNet", dict(args), (1, 1, 1)


# recipe name (lowercase, as build_network looks it up) → (argument translation, default groups)
MONAI_NETWORKS: dict[str, tuple[Callable[[dict[str, Any]], tuple[str, dict[str, Any], tuple[int, ...]]],
                                Callable[[Mapping[str, Any]], Groups]]] = {
    "monai.segresnet": (_segresnet, segresnet_groups),
    "monai.unet": (_unet, unet_groups),
    "monai.dynunet": (_dynunet, dynunet_groups),
    "monai.swinunetr": (_swinunetr, swinunetr_groups),
    "monai.highresnet": (_highresnet, highresnet_groups),
}


def default_groups(name: str, args: Mapping[str, Any]) -> Groups:
    """The shipped layer groups of MONAI network ``name`` built with constructor ``args``."""
    return MONAI_NETWORKS[name.lower()][1](args)


def build_monai_network(name: str, in_channels: int, num_classes: int, *, spatial_dims: int = 3,
                        groups: Mapping[str, Sequence[str]] | Sequence[Sequence[Any]] | None = None,
                        where: str = "network",
                        **args: Any) -> nn.Module:
    """MONAI network ``name`` (``"monai.segresnet"`` …) with ``layer_groups`` set and checked.

    ``groups``: ``{group: patterns}`` in order, or ``[[group, patterns], ...]`` (what checkpoints
    store); None = :func:`default_groups`.

    Raises:
        RecipeError: an argument MONAI refuses, or groups that do not split the parameters exactly.
    """
    from monai.networks import nets as monai_nets

    from vol_transfer.transfer.groups import check_partition

    translate, defaults = MONAI_NETWORKS[name.lower()]
    class_name, kwargs, divisor = translate(args)
    cls = _padded_class(getattr(monai_nets, class_name))
    try:
        model = cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError, AttributeError, KeyError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(f"{where}.options", f"MONAI {class_name} refused the arguments: {text}",
                          f"fix {where}.options (MONAI's {class_name} documentation lists them)") from None
    model.size_divisible = divisor[:spatial_dims]
    if groups is None:
        groups = defaults(args)
    pairs = groups.items() if isinstance(groups, Mapping) else groups  # checkpoints store [[group, patterns], ...]
    chosen = {group: (patterns,) if isinstance(patterns, str) else tuple(patterns) for group, patterns in pairs}
    check_partition(model, chosen, f"{where}.groups")
    model.layer_groups = chosen
    return model


OPTIONS: dict[str, type] = {"monai.segresnet": SegResNetOptions, "monai.unet": UNetOptions,
                             "monai.dynunet": DynUNetOptions, "monai.swinunetr": SwinUNETROptions,
                             "monai.highresnet": HighResNetOptions}


def _factory(name: str) -> Callable[..., nn.Module]:
    """``build_network``'s factory for ``name``, with a signature listing the typed options and their
    defaults (so ``build_network`` refuses an unknown option by name)."""

    def factory(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
        return build_monai_network(name, in_channels, num_classes, **options)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("in_channels", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
                  inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
                  inspect.Parameter("spatial_dims", keyword, default=3),
                  inspect.Parameter("groups", keyword, default=None)]
    parameters += [inspect.Parameter(key, keyword, default=value)
                   for key, value in config_to_dict(OPTIONS[name]()).items()]
    factory.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    factory.__name__ = name.replace(".", "_")
    return factory


for _name in MONAI_NETWORKS:
    from vol_transfer.nets import register_network

    register_network(_name, _factory(_name))

__all__ = ["MONAI_NETWORKS", "OPTIONS", "SegResNetOptions", "UNetOptions", "DynUNetOptions", "SwinUNETROptions",
           "HighResNetOptions", "build_monai_network", "default_groups", "segresnet_groups", "unet_groups",
           "dynunet_groups", "swinunetr_groups", "highresnet_groups"]
