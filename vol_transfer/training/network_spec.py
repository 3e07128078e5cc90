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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from vol_transfer.nets.autoencoder import AUTOENCODER_GROUPS
from vol_transfer.nets.classifiers2d import CBR_LARGE_T_GROUPS, CBR_WIDTHS, DENSENET121_GROUPS
from vol_transfer.nets.highres3dnet import HighRes3DNet
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
        return list(LAYER_GROUPS[self.name])


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

NetworkSpec = Union[HighRes3DNetSpec, CBRLargeTSpec, DenseNet121Spec, CBRAutoencoderSpec]
SegmentationNetworkSpec = HighRes3DNetSpec
ClassifierNetworkSpec = Union[CBRLargeTSpec, DenseNet121Spec]

__all__ = ["NetworkSpec", "SegmentationNetworkSpec", "ClassifierNetworkSpec", "HighRes3DNetSpec", "CBRLargeTSpec",
           "DenseNet121Spec", "CBRAutoencoderSpec", "HighRes3DNetOptions", "CBROptions", "DenseNet121Options"]
