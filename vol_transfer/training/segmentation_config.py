"""The ``segmentation`` task's recipe schema: one typed section per concern, checked before data is read.

Example recipe (see ``recipes/hippocampus_pretrain_cpu.yaml``)::

    task: segmentation
    data: {manifest: data_manifests/msd_hippocampus.csv, label_mapping: hippocampus}
    training: {iterations: 2000, batch_size: 4, window: [32, 32, 32], precision: bf16}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from vol_transfer.errors import RecipeError
from vol_transfer.preprocessing.intensity_steps import IntensityStep, ZScore
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.recipes import closest, option
from vol_transfer.sampling.torchio_augment import TorchioTransform
from vol_transfer.training.network_spec import HighRes3DNetSpec, SegmentationNetworkSpec
from vol_transfer.transfer.freezing_spec import FreezingSpec, NoFreezing

@dataclass
class DataSection:
    """Which cases, channels and labels to train on."""

    manifest: Path
    data_root: Optional[Path] = None  # default: --data-root, $VOL_TRANSFER_DATA, ../shared/data
    channels: Optional[list[str]] = option(None, min_len=1)  # subset/order of the manifest's channels
    label_mapping: Union[str, dict[int, int], None] = None  # a LABEL_PRESETS name or {source: target}
    classes: Optional[list[str]] = option(None, min_len=2)  # names, background first; default from the preset
    train_split: str = "train"
    validation_split: str = "validation"
    train_subjects: Optional[int] = option(None, ge=1)  # the first N training cases (nested subsets)
    validation_subjects: Optional[int] = option(None, ge=1)
    # cross-validation: validate on this fold of the training split and train on the others
    fold: Optional[int] = option(None, ge=0)


@dataclass
class PreprocessingSection(Preprocessor):
    """The :class:`~vol_transfer.preprocessing.pipeline.Preprocessor` spec stored in every checkpoint
    (:mod:`vol_transfer.preprocessing.intensity_steps` for the ``intensity`` kinds); recipes
    default to RAS and a z-score over the non-zero voxels."""

    orientation: Optional[str] = "RAS"
    intensity: list[IntensityStep] = option([ZScore(mask="nonzero")])


@dataclass
class AugmentationSection:
    """Per-window augmentation (:class:`vol_transfer.sampling.augment.Augmentation`)."""

    enabled: bool = True
    rotation_degrees: float = option(10.0, ge=0, le=180)  # ± about each axis
    scaling: float = option(0.1, ge=0, lt=1)  # ± isotropic zoom
    flip_axes: list[int] = option(default_factory=list, ge=0, le=2)
    gamma: Optional[float] = option(None, gt=0)
    noise_std: Optional[float] = option(None, gt=0)
    bias_field: Optional[float] = option(None, gt=0)
    # TorchIO transforms per window, in order: [{name: RandomMotion, p: 0.2, ...}] (sampling/torchio_augment.py)
    torchio: list[TorchioTransform] = option(default_factory=list)


@dataclass
class SamplerSection:
    """Class-weighted windows through :class:`vol_transfer.sampling.loader.PatchLoader`."""

    kind: Literal["balanced", "uniform"] = "balanced"
    class_probabilities: Optional[list[float]] = option(None, ge=0)  # per class; default equal over present
    padding: Literal["fit", "full"] = "fit"
    patches_per_volume: int = option(4, ge=1)
    volumes_per_block: int = option(4, ge=1)  # the shuffle buffer holds this many volumes' patches
    workers: int = option(0, ge=0)
    worker_transport: Literal["torch", "ring"] = "torch"  # ring: reused shared-memory slots (opt-in, see sampling/ring.py)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)


NetworkSection = SegmentationNetworkSpec  # {name: highres3dnet | monai.SegResNet | …, options: {...}}


@dataclass
class TransferSection:
    """Start from a source checkpoint: adapt input channels, replace the head, freeze layer groups.

    ``freezing`` is a :mod:`vol_transfer.transfer.freezing_spec` spec, e.g. ``{kind: freeze_first,
    k: 2}`` (the study's model 2), ``{kind: warmup, iterations: 200}``, ``{kind: gradual, every:
    500}`` or ``{kind: phases, phases: {0: [conv_0], 1000: []}}``, each with an optional
    ``bn_policy: update | freeze``. ``weight_scale: init`` brings a HighRes3DNet source's convolutions
    to He-initialisation size without changing its function (:mod:`vol_transfer.transfer.rescale`).
    """

    source: Optional[Path] = None
    channel_adaptation: Optional[Literal["repeat", "mean", "first"]] = None
    freezing: FreezingSpec = field(default_factory=NoFreezing)
    lr_multipliers: Optional[dict[str, float]] = option(None, ge=0)  # per layer group
    lr_decay: Optional[float] = option(None, gt=0, le=1)  # geometric per group toward the input
    # init: bring the source's convolutions to He size, same function (vol_transfer.transfer.rescale) — Adam
    # moves a weight by ~lr per step, so weights 25x their initial size (Li et al. 2017) learn 25x slower
    weight_scale: Literal["keep", "init"] = "keep"

    def validate(self, where: str) -> None:
        if self.lr_multipliers is not None and self.lr_decay is not None:
            raise RecipeError(_key(where, "lr_decay"), "both lr_multipliers and lr_decay are set", "choose one of them")

    def check_groups(self, groups: list[str], where: str) -> None:
        """Check the layer-group names and counts this section uses against the network's ``groups``."""
        self.freezing.check_groups(groups, _key(where, "freezing"))
        for name in self.lr_multipliers or {}:
            if name not in groups:
                raise RecipeError(_key(where, f"lr_multipliers.{name}"), f"unknown layer group {name!r}",
                                  f"{closest(name, groups)}groups: {', '.join(groups)}")


@dataclass
class ScheduleSection:
    kind: Literal["constant", "poly", "cosine", "step"] = "constant"
    warmup_iterations: int = option(0, ge=0)
    power: float = option(0.9, gt=0)
    min_factor: float = option(0.0, ge=0, le=1)
    gamma: float = option(0.1, gt=0, le=1)
    milestones: list[int] = option(default_factory=list, ge=1)
    step_size: Optional[int] = option(None, ge=1)


@dataclass
class OptimSection:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = option(1e-3, gt=0)
    weight_decay: float = option(1e-5, ge=0)  # L2 for adam/sgd, decoupled for adamw
    momentum: float = option(0.9, ge=0, lt=1)
    grad_clip: Optional[float] = option(None, gt=0)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)


@dataclass
class LossSection:
    kind: Literal["dice", "dice_ce", "ce"] = "dice_ce"
    class_weights: Optional[list[float]] = option(None, ge=0)
    include_background: bool = False


@dataclass
class TrainingSection:
    iterations: int = option(1000, ge=1)
    batch_size: int = option(2, ge=1)
    accumulate: int = option(1, ge=1)  # micro-batches per optimizer step
    window: tuple[int, int, int] = option((96, 96, 96), ge=1)
    # auto: bf16 on GPUs that have it, fp16 + gradient scaler on those that do not, fp32 on CPU (training/accelerator.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # channels_last_3d: auto = on for CPU (2-5x faster dilated 3D convs through oneDNN), off for CUDA
    channels_last: Union[bool, Literal["auto"]] = "auto"
    seed: int = 0
    deterministic: bool = True
    sync_batchnorm: bool = False  # SyncBatchNorm across DDP processes (CUDA only; the study's batch is 2 per GPU)
    device: str = "auto"
    threads: Optional[int] = option(None, ge=1)
    log_every: int = option(10, ge=1)


@dataclass
class ValidationSection:
    every: int = option(200, ge=1)
    window: Optional[tuple[int, int, int]] = option(None, ge=1)  # None: whole volume in one pass
    overlap: float = option(0.25, ge=0, lt=1)
    patience: Optional[int] = option(None, ge=1)  # validations without improvement before stopping
    min_delta: float = option(0.0, ge=0)
    # best: best.pt is the best validation Dice; last: the final weights (a fixed budget, nothing chosen on the
    # validation cases — use it when they are a held-out cross-validation fold that will be reported)
    select: Literal["best", "last"] = "best"

    def validate(self, where: str) -> None:
        if self.select == "last" and self.patience is not None:
            raise RecipeError(f"{where}.patience" if where else "patience",
                              "early stopping chooses on the validation cases, which select: last keeps unseen",
                              "set validation.patience: null, or validation.select: best")


@dataclass
class CheckpointSection:
    every: int = option(200, ge=1)


@dataclass
class SegmentationConfig:
    """A ``task: segmentation`` recipe."""

    data: DataSection
    preprocessing: PreprocessingSection = field(default_factory=PreprocessingSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    network: NetworkSection = field(default_factory=HighRes3DNetSpec)
    transfer: TransferSection = field(default_factory=TransferSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    description: str = ""

    def validate(self, where: str) -> None:
        self.transfer.check_groups(self.network.layer_group_names(), _key(where, "transfer"))
        if self.transfer.weight_scale == "init" and not isinstance(self.network, HighRes3DNetSpec):
            raise RecipeError(_key(where, "transfer.weight_scale"), "'init' knows only HighRes3DNet's layout",
                              "use network.name: highres3dnet, or weight_scale: keep")
        classes = self.class_names()
        if classes is None:
            raise RecipeError(_key(where, "data.classes"), "class names are unknown",
                              "list them (background first) or use a label_mapping preset name")
        for key, values in (("loss.class_weights", self.loss.class_weights),
                            ("sampler.class_probabilities", self.sampler.class_probabilities)):
            if values is not None and len(values) != len(classes):
                raise RecipeError(_key(where, key), f"has {len(values)} values for {len(classes)} classes {classes}",
                                  "give one value per class, background first")

    def class_names(self) -> list[str] | None:
        if self.data.classes is not None:
            return list(self.data.classes)
        if isinstance(self.data.label_mapping, str):
            from vol_transfer.preprocessing.labels import LABEL_PRESETS

            preset = LABEL_PRESETS.get(self.data.label_mapping)
            if preset is not None:
                return list(preset.classes)
            raise RecipeError("data.label_mapping", f"unknown preset {self.data.label_mapping!r}",
                              f"use one of {', '.join(sorted(LABEL_PRESETS))} or a {{source: target}} mapping")
        return None


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
