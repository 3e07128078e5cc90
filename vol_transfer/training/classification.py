"""Training a 2D image classifier with the shared engine: class balance, SGD/Adam, plateau decay, early stopping.

A ``task: classification`` recipe names the data (:class:`ImageDataConfig`), the network (a
``build_network`` config, e.g. ``cbr_large_t`` or ``densenet121_2d``), where its first weights
come from (scratch, a checkpoint, or a ``pretrain:`` pretext run done first in the same run
directory) and how to train. An epoch is ``iterations_per_epoch`` engine iterations; each epoch is
followed by validation; the best epoch by the selection metric is kept, training stops after
``early_stopping`` epochs without improvement. The run folder has the engine's layout plus the
validation outputs of the best checkpoint::

    recipe.yaml, summary.json, metrics.csv, tensorboard/, checkpoints/{best,last}.pt
    predictions.csv         one row per validation image (best checkpoint)
    roc.png, confusion_matrix.png
    pretrain/               the pretext run (same layout), when ``pretrain:`` is given

Example::

    config = ClassificationConfig(epochs=3, data=ImageDataConfig(max_train=500))
    run_classification(config, "runs/pneumonia_scratch")["validation"]["auc"]   # 0.95
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vol_transfer.errors import PathLike
from vol_transfer.evaluation.classification import (
    Predictions,
    classification_report,
    plot_confusion_matrix,
    plot_roc,
    study_wise,
    write_predictions,
)
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.nets import build_network
from vol_transfer.nets.classifiers2d import densenet_state_from_torchvision
from vol_transfer.recipes import config_to_dict, option, register_task
from vol_transfer.training.image_data import (
    image_preprocessing,
    BalanceMethod,
    ImageBatches,
    ImageDataConfig,
    ImageSet,
    epoch_indices,
    load_image_set,
    to_batch,
    with_data_root,
)
from vol_transfer.training.engine import (
    EngineSettings,
    PlateauDecay,
    Selection,
    Trainer,
    TrainingTask,
    ValidationResult,
)
from vol_transfer.training.pretext import PretextConfig, run_pretext, transfer_encoder
from vol_transfer.training.network_spec import CBRLargeTSpec, ClassifierNetworkSpec
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.transfer.lr_groups import make_optimizer as make_grouped_optimizer

logger = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """Optimiser and schedule: SGD with momentum or Adam, decayed on a validation-loss plateau."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = option(0.01, gt=0)
    momentum: float = option(0.9, ge=0, lt=1)
    weight_decay: float = option(0.0, ge=0)
    group_lr_decay: float = option(1.0, gt=0, le=1, help="discriminative LRs: each earlier layer group gets lr × this")
    plateau_factor: float = option(0.1, gt=0, lt=1)
    plateau_patience: int = option(2, ge=0)


@dataclass
class InitConfig:
    """Start from a weights file: copy the tensors whose names start with ``prefix``.

    ``encoder.`` = a CBR-LargeT trunk (from a pretext run's ``checkpoints/best.pt`` or another classifier); ``features.`` =
    a DenseNet-121 trunk; ``""`` = every tensor with a matching name and shape. ``rename:
    torchvision_densenet`` first renames a torchvision DenseNet file (ImageNet weights) to MONAI's
    names. First-layer weights are adapted to the input channel count (e.g. RGB → grey).
    """

    checkpoint: str = ""
    prefix: str = "encoder."
    rename: Literal["none", "torchvision_densenet"] = "none"


@dataclass
class ClassificationConfig:
    """A ``task: classification`` recipe."""

    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    network: ClassifierNetworkSpec = field(default_factory=CBRLargeTSpec)
    init: InitConfig | None = None
    pretrain: PretextConfig | None = None
    balance: BalanceMethod = "weighted_sampler"
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = option(10, ge=1)
    batch_size: int = option(32, ge=1)
    warmup_epochs: int = option(0, ge=0, help="epochs training only the head (last layer group) first")
    early_stopping: int = option(4, ge=1, help="stop after this many epochs without a better selection metric")
    bn_recalibration: int = option(320, ge=0, help="training images used to recompute BN statistics before validation (0 = off)")
    selection_metric: Literal["auc", "accuracy", "macro_f1", "loss"] = "auc"
    group_keywords: list[str] = option([], help="per-group accuracy: group = first keyword in the file name, else the class")
    train_split: str = "train"
    validation_split: str = "validation"
    seed: int = 0
    threads: int = option(2, ge=1)


def _initialise(
    config: ClassificationConfig, model: nn.Module, run_dir: Path, data_root: PathLike | None, progress: bool,
    resume: bool = False,
) -> dict[str, Any]:
    from vol_transfer.transfer.checkpoint import load_checkpoint

    source = None
    if config.pretrain is not None:
        pretrain_dir = Path(run_dir) / "pretrain"
        best = pretrain_dir / "checkpoints" / "best.pt"
        if not (pretrain_dir / "summary.json").is_file():  # not finished yet: (continue to) pre-train
            summary = run_pretext(config.pretrain, pretrain_dir, resume=(pretrain_dir / "checkpoints" / "last.pt").is_file(),
                                  data_root=data_root, progress=progress)
            atomic_write_text(pretrain_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        source = best
    elif config.init is not None and config.init.checkpoint:
        source = config.init.checkpoint
    if source is None:
        return {"init": "scratch"}
    state = load_checkpoint(source).state_dict
    init = config.init if config.pretrain is None and config.init is not None else InitConfig()
    if init.rename == "torchvision_densenet":
        state = densenet_state_from_torchvision(state)
    report = transfer_encoder(state, model, prefix=init.prefix, where=source)
    logger.info(f"init from {source}: {report.summary()}")
    return {"init": str(source), "copied": len(report.copied), "adapted": list(report.adapted),
            "reinitialised": list(report.reinitialised)}


def class_loss_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``N / (K · count_k)``: every class contributes equally to the loss.

    >>> class_loss_weights(np.array([0, 0, 0, 1]), 2)
    tensor([0.6667, 2.0000])
    """
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    return torch.tensor(len(labels) / (classes * np.maximum(counts, 1)), dtype=torch.float32)


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """One parameter group per layer group; earlier groups get ``lr × group_lr_decay^k``."""
    options = {"momentum": optim.momentum} if optim.name == "sgd" else {}
    return make_grouped_optimizer(model, optim.name, optim.lr, optim.weight_decay, decay=optim.group_lr_decay,
                                  **options)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> None:
    """Replace batch-norm running statistics by their exact average over ``images``.

    With few, large-learning-rate steps the exponential running averages lag the weights, and
    eval-mode predictions drift (e.g. every image called PNEUMONIA although the ranking, AUC, is
    good). A no-gradient pass over some training images fixes that ("precise BN"), done by
    ``torch.optim.swa_utils.update_bn`` (cumulative average: every batch weighs the same; the model
    gets its train/eval mode back). A trailing batch of one image is left out; fewer than two
    images leave the statistics as they are.
    """
    if len(images) < 2:
        return
    batches = (to_batch(images[first:first + batch_size]) for first in range(0, len(images) - 1, batch_size))
    device = next(model.parameters(), torch.empty(0)).device
    torch.optim.swa_utils.update_bn(batches, model, device=device)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities ``(N, K)`` for uint8 images (``model`` on ``device``)."""
    model.eval()
    outputs = [torch.softmax(model(to_batch(images[i:i + batch_size]).to(device)), dim=1).cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(outputs).numpy()


def image_group(path: PathLike, class_name: str, keywords: list[str]) -> str:
    """``class/keyword`` for the first keyword in the file name (e.g. ``PNEUMONIA/virus``), else the class."""
    name = Path(path).name.lower()
    found = next((k for k in keywords if k.lower() in name), None)
    return f"{class_name}/{found}" if found else class_name


SELECTION = {"auc": Selection("val/auc", "max"), "accuracy": Selection("val/accuracy", "max"),
             "macro_f1": Selection("val/macro_f1", "max"), "loss": Selection("val/loss", "min")}


class ClassifierValidator:
    """Validation metrics of a classifier, after an optional exact batch-norm recalibration.

    The recalibration images are a fixed, seeded, balanced sample of the training set (the same at
    every validation, so resume is exact).
    """

    def __init__(self, validation: ImageSet, train: ImageSet, config: ClassificationConfig) -> None:
        self.validation = validation
        self.batch_size = config.batch_size
        order = epoch_indices(train.labels, config.balance, np.random.default_rng([config.seed, 3]))
        self.recalibration = train.images[np.sort(order[: config.bn_recalibration])] if config.bn_recalibration else None

    def __call__(self, model: nn.Module) -> ValidationResult:
        if self.recalibration is not None:
            recalibrate_batch_norm(model, self.recalibration, self.batch_size)
        probabilities = predict(model, self.validation.images)
        loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probabilities).clamp_min(1e-7)),
                                            torch.from_numpy(self.validation.labels)))
        report = classification_report(self.validation.labels, probabilities, self.validation.classes)
        metrics = {"val/loss": loss, "val/accuracy": report["accuracy"], "val/macro_f1": report["macro"]["f1"],
                   "val/auc": report["auc"]}
        metrics.update({f"val/recall_{name}": report["per_class"][name]["recall"] for name in self.validation.classes
                        if name in report.get("per_class", {})})
        return ValidationResult(metrics)


def _write_outputs(run_dir: Path, data: ImageSet, probabilities: np.ndarray, result: dict[str, Any]) -> None:
    write_predictions(run_dir / "predictions.csv", Predictions(
        [str(p) for p in data.paths], probabilities, data.classes, [data.classes[y] for y in data.labels], data.patients))
    if len(data.classes) == 2:
        plot_roc(data.labels, probabilities[:, 1], run_dir / "roc.png", title="validation ROC")
    plot_confusion_matrix(result["validation"]["confusion_matrix"], data.classes, run_dir / "confusion_matrix.png")


def run_classification(
    config: ClassificationConfig, run_dir: PathLike, *, resume: bool = False, data_root: PathLike | None = None,
    progress: bool = True, **_: Any,
) -> dict[str, Any]:
    """Train with the engine, then score the best checkpoint on the validation split (see module docstring).

    ``data_root`` (the CLI's ``--data-root``) is used when the recipe's ``data.data_root`` is unset.
    """
    from vol_transfer.training.engine import seed_everything
    from vol_transfer.transfer.checkpoint import load_checkpoint, make_metadata
    from vol_transfer.transfer.freezing import FreezingSchedule

    run_dir = Path(run_dir)
    seed_everything(config.seed, deterministic=False)
    torch.set_num_threads(config.threads)
    data = with_data_root(config.data, data_root)
    train = load_image_set(data, config.train_split, progress=progress)
    validation = load_image_set(data, config.validation_split, progress=progress)
    logger.info(f"train {len(train)} images {dict(zip(train.classes, train.class_counts()))}, "
                f"validation {len(validation)} {dict(zip(validation.classes, validation.class_counts()))}")
    network = config.network.architecture(in_channels=data.channels, num_classes=len(train.classes))
    model = build_network(network)
    init = _initialise(config, model, run_dir, data_root, progress) if not resume else {"init": "resumed"}
    # a pre-training run in this process set its own seed and threads: training must not depend on it
    seed_everything(config.seed + 1, deterministic=False)
    torch.set_num_threads(config.threads)
    batches = ImageBatches(train.images, train.labels, config.batch_size, config.balance, config.seed, data.hflip,
                           augment=data.augment)
    class_weights = (class_loss_weights(train.labels, len(train.classes))
                     if config.balance == "class_weighted_loss" else None)
    per_epoch = batches.per_epoch
    selection = SELECTION[config.selection_metric]
    metadata = make_metadata(network, ["grey"] if data.channels == 1 else ["red", "green", "blue"],
                             validation.classes,
                             preprocessing=image_preprocessing(data),
                             recipe={"task": "classification", **config_to_dict(config)})
    freezing = FreezingSchedule.warmup(config.warmup_epochs * per_epoch, model) if config.warmup_epochs else None
    task = TrainingTask(
        model=model, batches=batches,
        loss=lambda net, batch: nn.functional.cross_entropy(
            net(batch["image"]), batch["label"],
            weight=None if class_weights is None else class_weights.to(batch["image"].device)),
        validate=ClassifierValidator(validation, train, config),
        make_optimizer=lambda net, _previous: make_optimizer(net, config.optim),
        schedule=LRSchedule(), metadata=metadata | {"task": "classification"}, selection=selection,
        freezing=freezing,
        plateau=PlateauDecay(Selection("val/loss", "min"), config.optim.plateau_factor, config.optim.plateau_patience),
        batch_size=batches.batch_size, iterations_per_epoch=per_epoch,
    )
    settings = EngineSettings(iterations=config.epochs * per_epoch, validate_every=per_epoch,
                              checkpoint_every=per_epoch, log_every=max(1, min(10, per_epoch)),
                              patience=config.early_stopping, no_stop_before=config.warmup_epochs * per_epoch,
                              progress=progress)
    summary = Trainer(task, settings, run_dir).run(resume=resume)

    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt").state_dict)
    probabilities = predict(model, validation.images)
    groups = [image_group(path, validation.classes[y], config.group_keywords)
              for path, y in zip(validation.paths, validation.labels)]
    image_report = classification_report(validation.labels, probabilities, validation.classes, groups=groups)
    patients, patient_labels, patient_scores = study_wise(validation.patients, validation.labels, probabilities[:, -1])
    patient_report = (classification_report(patient_labels, patient_scores, validation.classes)
                      if len(validation.classes) == 2 else None)
    best_iteration = summary["selection"]["iteration"] or summary["iterations"]
    summary.update({"task": "classification", "validation": image_report, "validation_patient_wise": patient_report,
                    "best_epoch": math.ceil(best_iteration / per_epoch), "epochs": math.ceil(summary["iterations"] / per_epoch),
                    "iterations_per_epoch": per_epoch, "init": init, "train_images": len(train),
                    "validation_images": len(validation)})
    _write_outputs(run_dir, validation, probabilities, summary)
    return summary


register_task("classification", ClassificationConfig, run_classification)
