"""The ``segmentation`` task: the run that trains a 3D segmentation network.

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

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.evaluation.metrics import dice_per_class, mean_dice
from vol_transfer.recipes import config_to_dict, register_task
from vol_transfer.training.accelerator import configure_backends, pin_memory, resolve_channels_last
from vol_transfer.training.distributed import DistInfo, all_reduce_sum
from vol_transfer.training.engine import (
    EngineSettings,
    Selection,
    Trainer,
    TrainingTask,
    ValidationResult,
    seed_everything,
)
from vol_transfer.training.logging import overlay_panel
from vol_transfer.training.losses import build_loss
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.training.segmentation_config import SegmentationConfig
from vol_transfer.training.segmentation_data import (
    PreparedCase,
    check_labels,
    load_cases,
    make_batches,
    training_images,
)

logger = logging.getLogger(__name__)

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


class WholeVolumeValidator:
    """Dice on whole validation volumes (sharded over DDP ranks), with the evaluator's convention.

    ``val/dice_mean`` is what ``vol-transfer evaluate`` reports for the split: each case's mean over
    its classes, averaged over cases (:func:`~vol_transfer.evaluation.metrics.mean_dice`; NaN Dice —
    class in neither prediction nor truth — left out). ``val/dice_<class>`` averages that class over
    the cases where it is defined.
    """

    def __init__(self, cases: Sequence[PreparedCase], classes: Sequence[str], loss_fn: Any,
                 window: Sequence[int] | None, overlap: float, info: DistInfo, channels_last: bool = False) -> None:
        self.cases = list(cases)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.loss_fn = loss_fn
        self.window = window
        self.overlap = overlap
        self.info = info
        self.channels_last = channels_last

    def __call__(self, model: torch.nn.Module) -> ValidationResult:
        k = self.num_classes - 1
        # per class: Dice sums and counts; per case: mean-Dice sum and count; loss sum and cases
        totals = torch.zeros(2 * k + 4, dtype=torch.float64)
        overlay = None
        for index in range(self.info.rank, len(self.cases), self.info.world_size):
            case = self.cases[index]
            image = torch.from_numpy(case.image)[None].to(self.info.device)
            logits = predict_logits(model, image, self.window, self.overlap, self.channels_last).float()
            label = torch.from_numpy(case.label.astype(np.int64))[None].to(self.info.device)
            totals[2 * k + 2] += float(self.loss_fn(logits, label))
            totals[2 * k + 3] += 1
            prediction = logits.argmax(1)[0].cpu().numpy()
            scores = dice_per_class(prediction, case.label, self.num_classes)
            for c, score in enumerate(scores):
                if not math.isnan(score):
                    totals[c] += score
                    totals[k + c] += 1
            case_mean = mean_dice(scores)  # the evaluator's rule: a case without any class present is left out
            if not math.isnan(case_mean):
                totals[2 * k] += case_mean
                totals[2 * k + 1] += 1
            if index == 0:  # 3 labelled slices, truth | prediction, scaled up (training/logging.py)
                overlay = overlay_panel(case.image[0], case.label, prediction, case.subject_id, self.classes,
                                        channel=(case.channels or ("",))[0])
        totals = all_reduce_sum(totals, self.info)

        def ratio(total: torch.Tensor, count: torch.Tensor) -> float:
            return float(total / count) if count > 0 else float("nan")

        metrics = {"val/loss": ratio(totals[2 * k + 2], totals[2 * k + 3]),
                   "val/dice_mean": ratio(totals[2 * k], totals[2 * k + 1])}
        metrics.update({f"val/dice_{name}": ratio(totals[c], totals[k + c]) for c, name in enumerate(self.classes[1:])})
        return ValidationResult(metrics, {"val/overlay": overlay} if overlay is not None else {})


# --------------------------------------------------------------------------------------------
# Model, transfer, optimizer
# --------------------------------------------------------------------------------------------


def network_config(config: SegmentationConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    return config.network.architecture(in_channels, num_classes)


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
    text = f"transfer from {config.transfer.source}:\n{report}"
    if config.transfer.weight_scale == "init":
        from vol_transfer.transfer.rescale import rescale_to_init

        text += "\n" + rescale_to_init(model).summary()
    warning = frozen_adaptation_warning(report.channel_changes, config)
    return f"{text}\n{warning}" if warning else text


def frozen_adaptation_warning(channel_changes: dict[str, tuple[int, int]], config: SegmentationConfig) -> str | None:
    """A warning when a channel-adapted first convolution is frozen from the start.

    ``channel_changes``: tensor name → (source, target) input channels, as
    :class:`~vol_transfer.transfer.adapt.TransferReport` records them.

    ``repeat`` and ``mean`` give every input channel the same kernels, so a frozen first layer sees
    only the channels' sum: the network can never use their difference (T2 against T1 is where
    tumour contrast lies); ``first`` gives the new channels zero kernels, which a frozen layer keeps at
    zero. Measured on BraTS 2018 T1+T2 (issue 13): model 1 reached Dice 0.14–0.18 where plain
    fine-tuning reached 0.45–0.49 at the same iteration.
    """
    from vol_transfer.transfer.freezing import FreezingSchedule

    adaptation = config.transfer.channel_adaptation
    if not channel_changes or adaptation not in ("repeat", "mean", "first"):
        return None
    from vol_transfer.transfer.groups import group_of

    groups = config.network.layer_groups()
    frozen_first = FreezingSchedule.from_spec(config.transfer.freezing, list(groups)).frozen_at(0)
    adapted = [name for name, (old, new) in channel_changes.items()
               if adaptation != "first" or new > old]  # with `first`, only gained channels have zero kernels
    adapted_groups = sorted({group_of(name, groups) for name in adapted} & set(frozen_first))
    if not adapted_groups:
        return None
    seen = ("the channels the source lacked start at zero kernels and stay zero, so the network ignores them"
            if adaptation == "first" else
            "every channel goes through the same kernels, so the network sees only their sum")
    return (f"warning: {', '.join(adapted_groups)} was adapted to the input channels by {adaptation!r} and is frozen: "
            f"{seen} — leave it trainable (e.g. transfer.freezing.kind: none, or freeze a later group first)")


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
    from vol_transfer.preprocessing.histogram_standardization import learn_landmarks
    from vol_transfer.preprocessing.pipeline import Preprocessor

    training = config.training
    if training.threads:
        torch.set_num_threads(training.threads)
    seed_everything(training.seed + info.rank, training.deterministic)
    configure_backends(info.device, training.deterministic)
    channels_last = resolve_channels_last(training.channels_last, info.device)

    root = resolve_data_root(data_root or config.data.data_root)
    manifest = read_manifest(config.data.manifest, data_root=root)
    preprocessor = learn_landmarks(Preprocessor.from_spec(config_to_dict(config.preprocessing)),
                                   lambda: training_images(config, manifest))
    classes = config.class_names()
    num_classes = len(classes)
    started = time.perf_counter()
    show = progress and info.is_main
    train_cases = load_cases(config, config.data.train_split, config.data.train_subjects, manifest, preprocessor, show)
    val_cases = load_cases(config, config.data.validation_split, config.data.validation_subjects, manifest,
                           preprocessor, show)
    load_s = time.perf_counter() - started
    check_labels(train_cases + val_cases, num_classes, manifest.path)
    in_channels = train_cases[0].image.shape[0]
    channel_names = list(train_cases[0].channels)  # resolved by name by the case loader

    architecture = network_config(config, in_channels, num_classes)
    model = build_network(architecture)
    report = transfer_from_source(model, config) if config.transfer.source is not None and not resume else None
    model = model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)

    loss_fn = build_loss(config.loss.kind, num_classes, config.loss.class_weights, config.loss.include_background)
    loss_fn = loss_fn.to(info.device)
    schedule_cfg = config.optim.schedule
    schedule = LRSchedule(schedule_cfg.kind, training.iterations, schedule_cfg.warmup_iterations, schedule_cfg.power,
                          schedule_cfg.min_factor, schedule_cfg.gamma, tuple(schedule_cfg.milestones),
                          schedule_cfg.step_size)
    metadata = {
        "task": "segmentation",
        "architecture": architecture,
        "channels": channel_names,
        "classes": classes,
        "preprocessing": preprocessor.to_spec(),
        "label_mapping": _mapping_for_metadata(config.data.label_mapping),
        "recipe": recipe if recipe is not None else config_to_dict(config),
        "iteration": 0,
        "metrics": {},
    }

    def loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(net(batch["image"].float()), batch["label"].long(), batch.get("valid"))  # int16 on the way

    task = TrainingTask(
        model=model, batches=make_batches(train_cases, config, info.rank, pin_memory(info.device)), loss=loss,
        validate=WholeVolumeValidator(val_cases, classes, loss_fn, config.validation.window,
                                      config.validation.overlap, info, channels_last),
        make_optimizer=make_optimizer_factory(config), schedule=schedule, metadata=metadata,
        selection=Selection("val/dice_mean", "last" if config.validation.select == "last" else "max"), freezing=make_freezing(config, model),
        batch_size=training.batch_size,
    )
    settings = EngineSettings(
        iterations=training.iterations, accumulate=training.accumulate, precision=training.precision,
        channels_last=channels_last, validate_every=config.validation.every,
        checkpoint_every=config.checkpoint.every, log_every=training.log_every,
        patience=config.validation.patience, min_delta=config.validation.min_delta,
        grad_clip=config.optim.grad_clip, sync_batchnorm=training.sync_batchnorm,
        progress=progress,
    )
    if info.is_main and report:
        logger.info(report)
    summary = Trainer(task, settings, run_dir, info).run(resume=resume)
    last = summary["last_validation"] or {}
    summary.update({
        "task": "segmentation",
        "classes": classes,
        "best_val_dice": summary["selection"]["value"],
        "best_iteration": summary["selection"]["iteration"],
        "last_val_dice": [last.get(f"val/dice_{name}", float("nan")) for name in classes[1:]],
        "load_s": load_s, "train_cases": len(train_cases), "validation_cases": len(val_cases),
        "world_size": info.world_size,
    })
    return summary


def _mapping_for_metadata(mapping: Any) -> Any:
    if isinstance(mapping, str):
        from vol_transfer.preprocessing.labels import resolve_mapping

        return {str(k): v for k, v in resolve_mapping(mapping).items()}
    if isinstance(mapping, dict):
        return {str(k): v for k, v in mapping.items()}
    return None


register_task("segmentation", SegmentationConfig, run_segmentation)
