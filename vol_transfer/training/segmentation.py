"""The ``segmentation`` task: a recipe's sections, and the run that trains a 3D segmentation network.

Flow: manifest → load + preprocess + relabel every case of the train and validation splits →
class-weighted windows → network (optionally transferred from a source checkpoint, with channel
adaptation and a freezing schedule) → :class:`~vol_transfer.training.engine.Trainer` with whole-volume
validation Dice → ``run_dir/checkpoints/{best,last}.pt`` carrying everything inference needs.

Example recipe (see ``recipes/hippocampus_pretrain_cpu.yaml``)::

    task: segmentation
    data: {manifest: data_manifests/msd_hippocampus.csv, label_mapping: hippocampus}
    training: {iterations: 2000, batch_size: 4, window: [32, 32, 32], precision: bf16}
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch

from vol_transfer.errors import InputDataError, RecipeError
from vol_transfer.recipes import config_to_dict, option, register_task
from vol_transfer.training.distributed import DistInfo, all_reduce_sum
from vol_transfer.training.engine import EngineSettings, Trainer, ValidationResult, seed_everything, unwrap
from vol_transfer.training.logging import overlay_slice
from vol_transfer.training.losses import build_loss
from vol_transfer.training.schedules import LRSchedule

# --------------------------------------------------------------------------------------------
# Recipe sections
# --------------------------------------------------------------------------------------------


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


@dataclass
class PreprocessingSection:
    """A :class:`vol_transfer.preprocessing.pipeline.Preprocessor` spec, stored in every checkpoint."""

    orientation: Optional[str] = "RAS"
    crop_foreground: Optional[int] = option(None, ge=0)
    intensity: list[dict[str, Any]] = option([{"kind": "zscore", "mask": "nonzero"}])
    spacing: Optional[tuple[float, float, float]] = option(None, gt=0)
    min_size: Optional[tuple[int, int, int]] = option(None, ge=1)

    def validate(self, where: str) -> None:
        from vol_transfer.preprocessing.pipeline import Preprocessor

        try:
            Preprocessor.from_spec(config_to_dict(self))
        except RecipeError as error:
            key = error.where if error.where.startswith("preprocessing") else f"{where}.{error.where}"
            raise RecipeError(key, error.problem, error.fix) from None


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


@dataclass
class SamplerSection:
    """Class-weighted windows through :class:`vol_transfer.sampling.loader.PatchLoader`."""

    kind: Literal["balanced", "uniform"] = "balanced"
    class_probabilities: Optional[list[float]] = option(None, ge=0)  # per class; default equal over present
    padding: Literal["fit", "full"] = "fit"
    patches_per_volume: int = option(4, ge=1)
    volumes_per_block: int = option(4, ge=1)  # the shuffle buffer holds this many volumes' patches
    workers: int = option(0, ge=0)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)


@dataclass
class NetworkSection:
    name: str = "highres3dnet"
    options: dict[str, Any] = field(default_factory=dict)  # extra build_network options (width, dropout…)


@dataclass
class TransferSection:
    """Start from a source checkpoint: adapt input channels, replace the head, freeze layer groups.

    ``freezing`` is a :meth:`vol_transfer.transfer.freezing.FreezingSchedule.from_spec` spec, e.g.
    ``{kind: freeze_first, k: 2}`` (the study's model 2), ``{kind: warmup, iterations: 200}``,
    ``{kind: gradual, every: 500}`` or ``{kind: phases, phases: {0: [conv_0], 1000: []}}``, each
    with an optional ``bn_policy: update | freeze``.
    """

    source: Optional[Path] = None
    channel_adaptation: Optional[Literal["repeat", "mean", "first"]] = None
    freezing: dict[str, Any] = option({"kind": "none"})
    lr_multipliers: Optional[dict[str, float]] = option(None, ge=0)  # per layer group
    lr_decay: Optional[float] = option(None, gt=0, le=1)  # geometric per group toward the input

    def validate(self, where: str) -> None:
        if self.lr_multipliers is not None and self.lr_decay is not None:
            raise RecipeError(_key(where, "lr_decay"), "both lr_multipliers and lr_decay are set", "choose one of them")
        if "kind" not in self.freezing and "phases" not in self.freezing:
            raise RecipeError(_key(where, "freezing.kind"), "is missing",
                              "use kind: none | freeze_first | warmup | gradual | phases")


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
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = True  # channels_last_3d: 2-5x faster dilated 3D convs on CPU (oneDNN), fine on CUDA
    seed: int = 0
    deterministic: bool = True
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


@dataclass
class CheckpointSection:
    every: int = option(200, ge=1)


@dataclass
class SegmentationConfig:
    """A ``task: segmentation`` recipe."""

    data: DataSection
    preprocessing: PreprocessingSection = field(default_factory=PreprocessingSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    description: str = ""

    def validate(self, where: str) -> None:
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedCase:
    """One preprocessed, relabelled case held in memory for sampling and validation."""

    subject_id: str
    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) int16


def _select_channels(image: np.ndarray, names: Sequence[str], wanted: Sequence[str] | None, where: str) -> np.ndarray:
    if wanted is None:
        return image
    missing = [w for w in wanted if w not in names]
    if missing:
        raise RecipeError("data.channels", f"{missing} not in the manifest's channels {list(names)} ({where})",
                          "use the manifest's channel column names")
    return image[[list(names).index(w) for w in wanted]]


def load_cases(config: SegmentationConfig, split: str, limit: int | None, manifest: Any,
               preprocessor: Any, progress: bool = False) -> list[PreparedCase]:
    """Load, preprocess and relabel the first ``limit`` cases of ``split``."""
    from vol_transfer.io.manifest import load_subject
    from vol_transfer.preprocessing.labels import remap_labels

    subjects = manifest.subjects(split)
    if limit is not None:
        subjects = subjects[:limit]
    if not subjects:
        raise InputDataError(manifest.path, f"has no cases in split {split!r}",
                             f"choose one of its splits {manifest.splits} in the recipe's data section")
    cases = []
    iterator = subjects
    if progress:
        from tqdm import tqdm

        iterator = tqdm(subjects, desc=f"load {split}", unit="case", leave=False)
    for subject in iterator:
        image, label = load_subject(subject)
        if label is None:
            raise InputDataError(manifest.path, f"subject {subject.subject_id} has no label",
                                 "give every training and validation case a label file")
        prepared, prepared_label, _ = preprocessor.apply_with_label(image, label)
        array = _select_channels(prepared.array, manifest.channel_names, config.data.channels, subject.subject_id)
        label_array = np.asarray(prepared_label.array)
        if label_array.ndim == 4:
            label_array = label_array[0]
        if config.data.label_mapping is not None:
            label_array = remap_labels(label_array, config.data.label_mapping)
        cases.append(PreparedCase(subject.subject_id, np.ascontiguousarray(array, dtype=np.float32),
                                  label_array.astype(np.int16)))
    return cases


class LoaderBatches:
    """The engine's batch source over a :class:`~vol_transfer.sampling.loader.PatchLoader`.

    The loader's stream is a pure function of ``(seed, batch number)``, so its state is the next
    batch number and resuming is exact whatever the number of workers.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._iterator = None

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return next(self._iterator)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._iterator = None


def make_batches(cases: Sequence[PreparedCase], config: SegmentationConfig, rank: int = 0) -> LoaderBatches:
    """Class-weighted, augmented windows from the in-memory training cases (seed offset per DDP rank)."""
    from vol_transfer.sampling.augment import Augmentation
    from vol_transfer.sampling.balanced import BalancedSampler
    from vol_transfer.sampling.loader import PatchLoader
    from vol_transfer.sampling.uniform import UniformSampler

    sampler_cfg, training = config.sampler, config.training
    if sampler_cfg.kind == "balanced":
        probabilities = None
        if sampler_cfg.class_probabilities is not None:
            probabilities = {k: p for k, p in enumerate(sampler_cfg.class_probabilities) if p > 0}
        sampler = BalancedSampler(training.window, probabilities, padding=sampler_cfg.padding)
    else:
        sampler = UniformSampler(training.window, padding=sampler_cfg.padding)
    aug = sampler_cfg.augmentation
    augmentation = None
    if aug.enabled:
        augmentation = Augmentation(rotation_degrees=aug.rotation_degrees, scaling=aug.scaling,
                                    flip_axes=tuple(aug.flip_axes), gamma=aug.gamma, noise_std=aug.noise_std,
                                    bias_field=aug.bias_field)
    loader = PatchLoader(list(cases), _in_memory, sampler, batch_size=training.batch_size,
                         patches_per_volume=sampler_cfg.patches_per_volume,
                         volumes_per_block=sampler_cfg.volumes_per_block, augmentation=augmentation,
                         seed=training.seed + 100_003 * rank, num_workers=sampler_cfg.workers, padding_label=-1,
                         cache=True)
    return LoaderBatches(loader)


def _in_memory(case: PreparedCase) -> tuple[np.ndarray, np.ndarray]:
    return case.image, case.label


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def predict_logits(model: torch.nn.Module, image: torch.Tensor, window: Sequence[int] | None,
                   overlap: float, channels_last: bool = True) -> torch.Tensor:
    """Logits ``(1, K, X, Y, Z)`` of a ``(1, C, X, Y, Z)`` volume through :mod:`vol_transfer.inference`.

    ``window=None``: the exact whole-volume path (one pass, or tiles with a receptive-field halo
    when memory is short); otherwise Gaussian-blended sliding windows with ``overlap``.
    """
    from vol_transfer.inference.predict import InferenceOptions
    from vol_transfer.inference.predict import predict_logits as infer

    options = InferenceOptions(mode="auto" if window is None else "window",
                               window=tuple(int(w) for w in window) if window is not None else 96,
                               overlap=overlap, channels_last=channels_last, device=image.device)
    return infer(model, image[0], options)[None].to(image.device)


def dice_per_class(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class (NaN when absent from both prediction and label)."""
    scores = []
    for k in range(1, num_classes):
        p, t = prediction == k, label == k
        denominator = int(p.sum()) + int(t.sum())
        scores.append(float("nan") if denominator == 0 else 2.0 * int((p & t).sum()) / denominator)
    return scores


class WholeVolumeValidator:
    """Dice per class on whole validation volumes, averaged over cases (sharded over DDP ranks)."""

    def __init__(self, cases: Sequence[PreparedCase], num_classes: int, loss_fn: Any, window: Sequence[int] | None,
                 overlap: float, info: DistInfo, channels_last: bool = False) -> None:
        self.cases = list(cases)
        self.num_classes = num_classes
        self.loss_fn = loss_fn
        self.window = window
        self.overlap = overlap
        self.info = info
        self.channels_last = channels_last

    def __call__(self, model: torch.nn.Module) -> ValidationResult:
        k = self.num_classes - 1
        totals = torch.zeros(2 * k + 2, dtype=torch.float64)  # dice sums, dice counts, loss sum, cases
        overlay = None
        for index in range(self.info.rank, len(self.cases), self.info.world_size):
            case = self.cases[index]
            image = torch.from_numpy(case.image)[None].to(self.info.device)
            logits = predict_logits(model, image, self.window, self.overlap, self.channels_last).float()
            label = torch.from_numpy(case.label.astype(np.int64))[None].to(self.info.device)
            totals[2 * k] += float(self.loss_fn(logits, label))
            totals[2 * k + 1] += 1
            prediction = logits.argmax(1)[0].cpu().numpy()
            for c, score in enumerate(dice_per_class(prediction, case.label, self.num_classes)):
                if not math.isnan(score):
                    totals[c] += score
                    totals[k + c] += 1
            if index == 0:
                z = int(np.argmax((case.label > 0).sum(axis=(0, 1)))) if case.label.any() else case.label.shape[2] // 2
                top = overlay_slice(case.image[0, :, :, z], case.label[:, :, z])
                bottom = overlay_slice(case.image[0, :, :, z], prediction[:, :, z])
                overlay = np.concatenate([top, bottom], axis=2)  # label | prediction, side by side
        totals = all_reduce_sum(totals, self.info)
        dice = [float(totals[c] / totals[k + c]) if totals[k + c] > 0 else float("nan") for c in range(k)]
        loss = float(totals[2 * k] / max(float(totals[2 * k + 1]), 1.0))
        return ValidationResult(dice=dice, loss=loss, overlay=overlay)


# --------------------------------------------------------------------------------------------
# Model, transfer, optimizer
# --------------------------------------------------------------------------------------------


def network_config(config: SegmentationConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    return {"name": config.network.name, "in_channels": in_channels, "num_classes": num_classes,
            **config.network.options}


def make_optimizer_factory(config: SegmentationConfig):
    """A function (model, previous optimizer) → optimizer over the trainable parameters.

    One parameter group per layer group (learning rate × ``transfer.lr_multipliers`` or
    ``lr_decay``); frozen parameters are left out, so they get no update and no weight decay.
    Rebuilding after a freezing change keeps the Adam moments of parameters that stay trainable.
    """
    from vol_transfer.transfer.lr_groups import make_optimizer, param_groups, rebuild_optimizer

    optim, transfer = config.optim, config.transfer
    options = {"momentum": optim.momentum} if optim.name == "sgd" else {}

    def make(model: torch.nn.Module, previous: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        try:
            if previous is None:
                return make_optimizer(model, optim.name, optim.lr, optim.weight_decay,
                                      multipliers=transfer.lr_multipliers, decay=transfer.lr_decay, **options)
            groups = param_groups(model, optim.lr, optim.weight_decay, multipliers=transfer.lr_multipliers,
                                  decay=transfer.lr_decay)
            return rebuild_optimizer(previous, groups)
        except RecipeError as error:
            raise _prefixed(error, "transfer") from None

    return make


def _prefixed(error: RecipeError, section: str) -> RecipeError:
    where = error.where.replace("optimizer.", "")
    return RecipeError(f"{section}.{where}", error.problem, error.fix)


def make_freezing(config: SegmentationConfig, model: torch.nn.Module):
    """The recipe's freezing schedule for ``model`` (None when nothing is ever frozen)."""
    from vol_transfer.transfer.freezing import FreezingSchedule

    try:
        schedule = FreezingSchedule.from_spec(config.transfer.freezing, model)
    except RecipeError as error:
        raise _prefixed(error, "transfer") from None
    return None if all(not frozen for _, frozen in schedule.phases) else schedule


def transfer_from_source(model: torch.nn.Module, config: SegmentationConfig) -> str:
    """Copy matching weights from the source checkpoint (adapting input channels, new head); return the report."""
    from vol_transfer.transfer.adapt import transfer_weights
    from vol_transfer.transfer.checkpoint import load_checkpoint

    source = load_checkpoint(config.transfer.source)
    report = transfer_weights(model, source, channels=config.transfer.channel_adaptation, head="auto")
    return f"transfer from {config.transfer.source}:\n{report}"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_segmentation(config: SegmentationConfig, run_dir: Path, resume: bool = False,
                     data_root: Path | None = None, recipe: dict[str, Any] | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train as the recipe says; write checkpoints, metrics.csv and TensorBoard logs under ``run_dir``."""
    from vol_transfer.training.distributed import process_group

    with process_group(config.training.device) as info:
        return _train(config, run_dir, resume, data_root, recipe, progress, info)


def _train(config: SegmentationConfig, run_dir: Path, resume: bool, data_root: Path | None,
           recipe: dict[str, Any] | None, progress: bool, info: Any) -> dict[str, Any]:
    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.nets import build_network
    from vol_transfer.preprocessing.pipeline import Preprocessor

    training = config.training
    if training.threads:
        torch.set_num_threads(training.threads)
    seed_everything(training.seed + info.rank, training.deterministic)

    root = resolve_data_root(data_root or config.data.data_root)
    manifest = read_manifest(config.data.manifest, data_root=root)
    preprocessor = Preprocessor.from_spec(config_to_dict(config.preprocessing))
    classes = config.class_names()
    num_classes = len(classes)
    started = time.perf_counter()
    show = progress and info.is_main
    train_cases = load_cases(config, config.data.train_split, config.data.train_subjects, manifest, preprocessor, show)
    val_cases = load_cases(config, config.data.validation_split, config.data.validation_subjects, manifest,
                           preprocessor, show)
    load_s = time.perf_counter() - started
    _check_labels(train_cases + val_cases, num_classes, manifest.path)
    in_channels = train_cases[0].image.shape[0]
    channel_names = list(config.data.channels or manifest.channel_names)

    architecture = network_config(config, in_channels, num_classes)
    model = build_network(architecture)
    report = transfer_from_source(model, config) if config.transfer.source is not None and not resume else None
    channels_last = training.channels_last
    model = model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    loss_fn = build_loss(config.loss.kind, num_classes, config.loss.class_weights, config.loss.include_background)
    loss_fn = loss_fn.to(info.device)
    batches = make_batches(train_cases, config, info.rank)
    validator = WholeVolumeValidator(val_cases, num_classes, loss_fn, config.validation.window,
                                     config.validation.overlap, info, channels_last)
    schedule_cfg = config.optim.schedule
    schedule = LRSchedule(schedule_cfg.kind, training.iterations, schedule_cfg.warmup_iterations, schedule_cfg.power,
                          schedule_cfg.min_factor, schedule_cfg.gamma, tuple(schedule_cfg.milestones),
                          schedule_cfg.step_size)
    freezing = make_freezing(config, unwrap(model))
    metadata = {
        "architecture": architecture,
        "channels": channel_names,
        "classes": classes,
        "preprocessing": preprocessor.to_spec(),
        "label_mapping": _mapping_for_metadata(config.data.label_mapping),
        "recipe": recipe if recipe is not None else config_to_dict(config),
        "iteration": 0,
        "metrics": {},
    }
    settings = EngineSettings(
        iterations=training.iterations, accumulate=training.accumulate, precision=training.precision,
        channels_last=channels_last, validate_every=config.validation.every,
        checkpoint_every=config.checkpoint.every, log_every=training.log_every,
        patience=config.validation.patience, min_delta=config.validation.min_delta,
        grad_clip=config.optim.grad_clip, progress=progress,
    )
    trainer = Trainer(model, make_optimizer_factory(config), loss_fn, batches, validator, schedule, settings,
                      run_dir, metadata, classes, info, freezing, training.batch_size)
    if info.is_main and report:
        print(report, flush=True)
    summary = trainer.run(resume=resume)
    summary.update({"classes": classes, "load_s": load_s, "train_cases": len(train_cases),
                    "validation_cases": len(val_cases), "world_size": info.world_size})
    return summary


def _check_labels(cases: Sequence[PreparedCase], num_classes: int, where: Path) -> None:
    for case in cases:
        top = int(case.label.max())
        if top >= num_classes:
            raise InputDataError(where, f"{case.subject_id} has label value {top} but the recipe has "
                                        f"{num_classes} classes", "set data.label_mapping or data.classes to match")


def _mapping_for_metadata(mapping: Any) -> Any:
    if isinstance(mapping, str):
        from vol_transfer.preprocessing.labels import resolve_mapping

        return {str(k): v for k, v in resolve_mapping(mapping).items()}
    if isinstance(mapping, dict):
        return {str(k): v for k, v in mapping.items()}
    return None


register_task("segmentation", SegmentationConfig, run_segmentation)
