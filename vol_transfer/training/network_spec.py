"""The ``network`` section of a recipe, typed per network name: ``{name: ..., options: {...}}``.

Each spec fixes ``name`` (a :func:`vol_transfer.nets.build_network` name) and types that
network's own options, so ``network.options.widht`` or a 2-D classifier in a 3-D task is refused
when the recipe is read. The task supplies ``in_channels`` and ``num_classes`` (from the data), and
:meth:`architecture` gives the ``build_network`` config stored in checkpoints. Tasks pick the
union they accept: :data:`NetworkSpec` (any), :data:`SegmentationNetworkSpec` (3-D),
:data:`ClassifierNetworkSpec` (2-D classifiers).

Example:
    >>> from vol_transfer.recipes import from_dict
    >>> spec = from_dict(NetworkSpec, {"name": "highres3dnet", "options": {"width": 0.5}}, "network")
    >>> spec.architecture(in_channels=2, num_classes=3)
    {'name': 'highres3dnet', 'in_channels': 2, 'num_classes': 3, 'activation': 'relu', 'width': 0.5, 'dropout': 0.0}
    >>> spec.layer_group_names()
    ['conv_0', 'res_1', 'res_2', 'res_3', 'conv_1', 'conv_2']
    >>> from_dict(NetworkSpec, {"name": "highres3dnet", "options": {"widht": 0.5}}, "network")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: network.options.widht: unknown key — did you mean 'width'? valid keys: activation, width, dropout

MONAI's segmentation networks (:mod:`vol_transfer.nets.monai_networks`) are named ``monai.<Class>``;
``options`` are the class's constructor arguments and ``groups`` (optional) its layer groups, an
ordered mapping of glob patterns over parameter names that must split the parameters exactly:
    >>> spec = from_dict(NetworkSpec, {"name": "monai.SegResNet", "options": {"init_filters": 8}}, "network")
    >>> spec.layer_group_names()
    ['stem', 'enc1', 'enc2', 'enc3', 'enc4', 'dec3', 'dec2', 'dec1', 'head']
    >>> from_dict(NetworkSpec, {"name": "monai.SegResNet", "groups": {"stem": ["convInit.*"], "rest": ["down_*", "up_*"]}},
    ...           "network")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: network.groups: 4 parameter(s)/buffer(s) belong to no group: conv_final.0.weight, conv_final.0.bias, conv_final.2.conv.weight, conv_final.2.conv.bias — add patterns for them to a group (every parameter must be in exactly one group)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch

from vol_transfer.nets.autoencoder import AUTOENCODER_GROUPS
from vol_transfer.nets.classifiers2d import CBR_LARGE_T_GROUPS, CBR_WIDTHS, DENSENET121_GROUPS
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.nets.monai_networks import (DynUNetOptions, HighResNetOptions, SegResNetOptions, SwinUNETROptions,
                                               UNetOptions)
from vol_transfer.recipes import config_to_dict, option


class _Network:
    """What every network spec offers (the dataclasses below add ``name`` and ``options``)."""

    name: str
    options: Any

    def architecture(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """The :func:`vol_transfer.nets.build_network` config (stored in checkpoints as ``architecture``)."""
        return {"name": self.name, "in_channels": in_channels, "num_classes": num_classes,
                **config_to_dict(self.options)}

    def layer_group_names(self) -> list[str]:
        """The network's layer groups in order (for freezing and per-group learning rates)."""
        return list(self.layer_groups())

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        """The ordered ``group → parameter-name patterns`` map (:mod:`vol_transfer.transfer.groups`)."""
        return dict(LAYER_GROUPS[self.name])


@dataclass(kw_only=True)
class HighRes3DNetOptions:
    """:class:`vol_transfer.nets.highres3dnet.HighRes3DNet` options."""

    activation: Literal["relu", "prelu"] = "relu"
    width: float = option(1.0, gt=0)  # multiplier on every group's channel count
    dropout: float = option(0.0, ge=0, lt=1)  # before conv_2


@dataclass(kw_only=True)
class HighRes3DNetSpec(_Network):
    """HighRes3DNet, the 3-D segmentation network of the freezing study."""

    name: Literal["highres3dnet"] = "highres3dnet"
    options: HighRes3DNetOptions = field(default_factory=HighRes3DNetOptions)


@dataclass(kw_only=True)
class CBROptions:
    """:func:`vol_transfer.nets.classifiers2d.cbr_large_t` and :func:`vol_transfer.nets.autoencoder.cbr_autoencoder`
    options (the autoencoder's encoder is the classifier's trunk)."""

    widths: list[int] = option(list(CBR_WIDTHS), ge=1, min_len=1)


@dataclass(kw_only=True)
class CBRLargeTSpec(_Network):
    """CBR-LargeT, the 2-D classifier of the pneumonia studies."""

    name: Literal["cbr_large_t"] = "cbr_large_t"
    options: CBROptions = field(default_factory=CBROptions)


@dataclass(kw_only=True)
class DenseNet121Options:
    """:func:`vol_transfer.nets.classifiers2d.densenet121_2d` options (MONAI's DenseNet-121)."""

    head: Literal["concat_pool", "monai"] = "concat_pool"
    hidden: int = option(512, ge=1)  # concat_pool head only
    dropout: float = option(0.0, ge=0, lt=1)  # concat_pool head only


@dataclass(kw_only=True)
class DenseNet121Spec(_Network):
    """MONAI's 2-D DenseNet-121 classifier (ImageNet weights fit its trunk)."""

    name: Literal["densenet121_2d"] = "densenet121_2d"
    options: DenseNet121Options = field(default_factory=DenseNet121Options)


@dataclass(kw_only=True)
class CBRAutoencoderSpec(_Network):
    """The autoencoder whose encoder is CBR-LargeT's trunk (pretext tasks)."""

    name: Literal["cbr_autoencoder"] = "cbr_autoencoder"
    options: CBROptions = field(default_factory=CBROptions)


# the layer-group maps of the networks: fixed per architecture (channels and options do not change them)
LAYER_GROUPS = {"highres3dnet": HighRes3DNet.layer_groups, "cbr_large_t": CBR_LARGE_T_GROUPS,
                "densenet121_2d": DENSENET121_GROUPS, "cbr_autoencoder": AUTOENCODER_GROUPS}


# --------------------------------------------------------------------------------------------
# MONAI's 3-D segmentation networks (vol_transfer.nets.monai_networks): typed constructor options,
# layer groups from the recipe (network.groups, ordered, glob patterns) or the shipped defaults
# --------------------------------------------------------------------------------------------


def _check_groups_map(groups: Any) -> str | None:
    for name, patterns in groups.items():
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            return f"group {name!r} needs a non-empty list of glob patterns"
    return None


_GROUPS_HELP = "an ordered mapping group → [glob patterns over parameter names], input to output, head last"


@dataclass(kw_only=True)
class _MonaiNetwork(_Network):
    """What every MONAI network spec offers: ``options`` are the MONAI constructor's arguments
    (``spatial_dims``, ``in_channels``, ``out_channels`` come from the data), ``groups`` the layer groups."""

    groups: Optional[dict[str, list[str]]] = option(None, min_len=1, check=_check_groups_map, help=_GROUPS_HELP)

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        """The ordered ``group → patterns`` map: the recipe's ``groups``, else the network's defaults."""
        from vol_transfer.nets.monai_networks import default_groups

        if self.groups is not None:
            return {name: tuple(patterns) for name, patterns in self.groups.items()}
        return default_groups(self.name, config_to_dict(self.options))

    def layer_group_names(self) -> list[str]:
        return list(self.layer_groups())

    def architecture(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        # [[group, patterns], ...]: a list keeps the order through the checkpoint's JSON (which sorts mapping keys)
        groups = [[name, list(patterns)] for name, patterns in self.layer_groups().items()]
        return {"name": self.name.lower(), "in_channels": in_channels, "num_classes": num_classes, "spatial_dims": 3,
                **config_to_dict(self.options), "groups": groups}

    def validate(self, where: str) -> None:
        """Build the network on the meta device (no memory) and check the groups split its parameters."""
        from vol_transfer.nets.monai_networks import build_monai_network

        self.options.check(f"{where}.options" if where else "options")
        arguments = {"groups": self.layer_groups(), "where": where or "network", **config_to_dict(self.options)}
        try:
            with torch.device("meta"):
                build_monai_network(self.name, 1, 2, **arguments)
        except RuntimeError:  # a constructor that reads tensor values (SwinUNETR): build it for real
            build_monai_network(self.name, 1, 2, **arguments)


@dataclass(kw_only=True)
class MonaiSegResNetSpec(_MonaiNetwork):
    """MONAI's SegResNet."""

    name: Literal["monai.SegResNet"] = "monai.SegResNet"
    options: SegResNetOptions = field(default_factory=SegResNetOptions)


@dataclass(kw_only=True)
class MonaiUNetSpec(_MonaiNetwork):
    """MONAI's UNet."""

    name: Literal["monai.UNet"] = "monai.UNet"
    options: UNetOptions = field(default_factory=UNetOptions)


@dataclass(kw_only=True)
class MonaiDynUNetSpec(_MonaiNetwork):
    """MONAI's DynUNet (the nnU-Net architecture)."""

    name: Literal["monai.DynUNet"] = "monai.DynUNet"
    options: DynUNetOptions = field(default_factory=DynUNetOptions)


@dataclass(kw_only=True)
class MonaiSwinUNETRSpec(_MonaiNetwork):
    """MONAI's SwinUNETR."""

    name: Literal["monai.SwinUNETR"] = "monai.SwinUNETR"
    options: SwinUNETROptions = field(default_factory=SwinUNETROptions)


@dataclass(kw_only=True)
class MonaiHighResNetSpec(_MonaiNetwork):
    """MONAI's HighResNet."""

    name: Literal["monai.HighResNet"] = "monai.HighResNet"
    options: HighResNetOptions = field(default_factory=HighResNetOptions)


MonaiNetworkSpec = Union[MonaiSegResNetSpec, MonaiUNetSpec, MonaiDynUNetSpec, MonaiSwinUNETRSpec, MonaiHighResNetSpec]
NetworkSpec = Union[HighRes3DNetSpec, CBRLargeTSpec, DenseNet121Spec, CBRAutoencoderSpec, MonaiSegResNetSpec,
                    MonaiUNetSpec, MonaiDynUNetSpec, MonaiSwinUNETRSpec, MonaiHighResNetSpec]
SegmentationNetworkSpec = Union[HighRes3DNetSpec, MonaiSegResNetSpec, MonaiUNetSpec, MonaiDynUNetSpec,
                                MonaiSwinUNETRSpec, MonaiHighResNetSpec]
ClassifierNetworkSpec = Union[CBRLargeTSpec, DenseNet121Spec]

__all__ = ["NetworkSpec", "SegmentationNetworkSpec", "ClassifierNetworkSpec", "MonaiNetworkSpec", "HighRes3DNetSpec",
           "CBRLargeTSpec", "DenseNet121Spec", "CBRAutoencoderSpec", "HighRes3DNetOptions", "CBROptions",
           "DenseNet121Options", "MonaiSegResNetSpec", "MonaiUNetSpec", "MonaiDynUNetSpec", "MonaiSwinUNETRSpec",
           "MonaiHighResNetSpec", "SegResNetOptions", "UNetOptions", "DynUNetOptions", "SwinUNETROptions",
           "HighResNetOptions"]
