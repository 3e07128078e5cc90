"""Training a 2D image classifier: class balance, SGD/Adam, plateau decay, early stopping.

A ``task: classification`` recipe names the data (:class:`ImageDataConfig`), the network (a
``build_network`` config, e.g. ``cbr_large_t`` or ``densenet121_2d``), where its first weights
come from (scratch, a checkpoint, or a ``pretrain:`` pretext run done first in the same run
directory) and how to train. Each epoch is followed by validation; the best epoch by the selection
metric is kept, training stops after ``early_stopping`` epochs without improvement, and the run
directory receives::

    best.pt                 weights + metadata (architecture, classes, preprocessing, recipe, metrics)
    metrics.json            validation report (image-wise and patient-wise) + history
    predictions.csv         one row per validation image
    roc.png, confusion_matrix.png
    tensorboard/            losses, accuracy, F1, AUC, learning rate
    pretrain/               the pretext run, when ``pretrain:`` is given

Example:
    >>> config = ClassificationConfig(epochs=3, data=ImageDataConfig(max_train=500))   # doctest: +SKIP
    >>> run_classification(config, "runs/pneumonia_scratch")["validation"]["auc"]      # doctest: +SKIP
    0.95
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vol_transfer.errors import PathLike
from vol_transfer.evaluation.classification import (
    classification_report,
    plot_confusion_matrix,
    plot_roc,
    study_wise,
)
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.nets import build_network
from vol_transfer.nets.classifiers2d import densenet_state_from_torchvision
from vol_transfer.recipes import config_to_dict, option, register_task
from vol_transfer.training.image_data import (
    BalanceMethod,
    ImageDataConfig,
    ImageSet,
    epoch_indices,
    load_image_set,
    to_batch,
    start_image_run,
)
from vol_transfer.training.pretext import PretextConfig, run_pretext, transfer_encoder
from vol_transfer.transfer.freezing import set_frozen
from vol_transfer.transfer.groups import layer_groups_of
from vol_transfer.transfer.lr_groups import make_optimizer as make_grouped_optimizer


def _default_network() -> dict[str, Any]:
    return {"name": "cbr_large_t", "in_channels": 1, "num_classes": 2}


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

    ``encoder.`` = a CBR-LargeT trunk (from ``pretext.pt`` or another classifier); ``features.`` =
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
    network: dict[str, Any] = option(default_factory=_default_network)
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
    config: ClassificationConfig, model: nn.Module, run_dir: Path, data_root: PathLike | None, progress: bool
) -> dict[str, Any]:
    from vol_transfer.transfer.checkpoint import load_checkpoint

    source = None
    if config.pretrain is not None:
        pretext = run_pretext(config.pretrain, run_dir / "pretrain", data_root=data_root, progress=progress)
        source = pretext["checkpoint"]
    elif config.init is not None and config.init.checkpoint:
        source = config.init.checkpoint
    if source is None:
        return {"init": "scratch"}
    state = load_checkpoint(source).state_dict
    init = config.init if config.pretrain is None and config.init is not None else InitConfig()
    if init.rename == "torchvision_densenet":
        state = densenet_state_from_torchvision(state)
    report = transfer_encoder(state, model, prefix=init.prefix, where=source)
    print(f"init from {source}: {report.summary()}", flush=True)
    return {"init": str(source), "copied": len(report.copied), "adapted": list(report.adapted),
            "reinitialised": list(report.reinitialised)}


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """One parameter group per layer group; earlier groups get ``lr × group_lr_decay^k``."""
    options = {"momentum": optim.momentum} if optim.name == "sgd" else {}
    return make_grouped_optimizer(model, optim.name, optim.lr, optim.weight_decay, decay=optim.group_lr_decay,
                                  **options)


def set_trainable(model: nn.Module, head_only: bool) -> None:
    """Freeze every layer group but the last (the head) when ``head_only``; else unfreeze all.

    The optimizer keeps every group (frozen parameters get no gradient, so no update and no decay).
    """
    groups = list(layer_groups_of(model))
    set_frozen(model, groups[:-1] if head_only else [])


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> None:
    """Replace batch-norm running statistics by their exact average over ``images``.

    With few, large-learning-rate steps the exponential running averages lag the weights, and
    eval-mode predictions drift (e.g. every image called PNEUMONIA although the ranking, AUC, is
    good). A no-gradient pass over some training images fixes that ("precise BN").
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images) < 2:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average = exact mean over the passes
    model.train()
    for first in range(0, len(images) - 1, batch_size):
        model(to_batch(images[first:first + batch_size]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, K)`` for uint8 images."""
    model.eval()
    outputs = [torch.softmax(model(to_batch(images[i:i + batch_size])), dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs).numpy()


def _train_epoch(model, optimizer, data: ImageSet, config: ClassificationConfig, rng) -> float:
    model.train()
    order = epoch_indices(data.labels, config.balance, rng)
    losses = []
    for first in range(0, len(order), config.batch_size):
        index = order[first:first + config.batch_size]
        if len(index) < 2:  # batch norm needs two samples
            continue
        inputs = to_batch(data.images[index], hflip=config.data.hflip, rng=rng)
        loss = nn.functional.cross_entropy(model(inputs), torch.from_numpy(data.labels[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def image_group(path: PathLike, class_name: str, keywords: list[str]) -> str:
    """``class/keyword`` for the first keyword in the file name (e.g. ``PNEUMONIA/virus``), else the class."""
    name = Path(path).name.lower()
    found = next((k for k in keywords if k.lower() in name), None)
    return f"{class_name}/{found}" if found else class_name


def _selection_value(name: str, report: dict[str, Any], loss: float) -> float:
    if name == "loss":
        return -loss
    if name == "macro_f1":
        return report["macro"]["f1"]
    value = report[name]
    return -np.inf if value != value else value  # NaN AUC (one class) never wins


def _write_outputs(run_dir: Path, data: ImageSet, probabilities: np.ndarray, result: dict[str, Any]) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "patient_id", "label", "prediction", *[f"p_{c}" for c in data.classes]])
    for path, patient, label, p in zip(data.paths, data.patients, data.labels, probabilities):
        writer.writerow([str(path), patient, data.classes[label], data.classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    atomic_write_text(run_dir / "predictions.csv", rows.getvalue())
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2, default=float))
    if len(data.classes) == 2:
        plot_roc(data.labels, probabilities[:, 1], run_dir / "roc.png", title="validation ROC")
    plot_confusion_matrix(result["validation"]["confusion_matrix"], data.classes, run_dir / "confusion_matrix.png")


def run_classification(
    config: ClassificationConfig, run_dir: PathLike, *, data_root: PathLike | None = None, progress: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Train, select by validation, write the run directory (see module docstring); return metrics.

    ``data_root`` (the CLI's ``--data-root``) is used when the recipe's ``data.data_root`` is unset.
    """
    from torch.utils.tensorboard import SummaryWriter

    from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

    run_dir, rng, data = start_image_run(run_dir, config.seed, config.threads, config.data, data_root)
    train = load_image_set(data, config.train_split, progress=progress)
    validation = load_image_set(data, config.validation_split, progress=progress)
    print(f"train {len(train)} images {dict(zip(train.classes, train.class_counts()))}, "
          f"validation {len(validation)} {dict(zip(validation.classes, validation.class_counts()))}", flush=True)
    network = {**config.network, "in_channels": config.data.channels, "num_classes": len(train.classes)}
    model = build_network(network)
    init = _initialise(config, model, run_dir, data_root, progress)
    optimizer = make_optimizer(model, config.optim)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.optim.plateau_factor, patience=config.optim.plateau_patience)
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    best_value, best_state, best_epoch, history = -np.inf, None, 0, []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        set_trainable(model, head_only=epoch <= config.warmup_epochs)
        train_loss = _train_epoch(model, optimizer, train, config, rng)
        if config.bn_recalibration:
            sample = epoch_indices(train.labels, config.balance, rng)[: config.bn_recalibration]
            recalibrate_batch_norm(model, train.images[sample], config.batch_size)
        probabilities = predict(model, validation.images)
        val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probabilities).clamp_min(1e-7)),
                                                torch.from_numpy(validation.labels)))
        report = classification_report(validation.labels, probabilities, validation.classes)
        if epoch > config.warmup_epochs:
            plateau.step(val_loss)
        lr = optimizer.param_groups[0]["lr"]
        entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "accuracy": report["accuracy"],
                 "macro_f1": report["macro"]["f1"], "auc": report["auc"], "lr": lr,
                 "seconds": round(time.perf_counter() - started, 1)}
        history.append(entry)
        for key in ("train_loss", "val_loss", "accuracy", "macro_f1", "auc", "lr"):
            writer.add_scalar(f"classification/{key}", entry[key], epoch)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()), flush=True)
        value = _selection_value(config.selection_metric, report, val_loss)
        if value > best_value:
            best_value, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.early_stopping and epoch > config.warmup_epochs:
            if epoch < config.epochs:
                print(f"early stopping: no better {config.selection_metric} for {config.early_stopping} epochs", flush=True)
                break
    writer.close()
    model.load_state_dict(best_state)
    probabilities = predict(model, validation.images)
    groups = [image_group(path, validation.classes[y], config.group_keywords)
              for path, y in zip(validation.paths, validation.labels)]
    image_report = classification_report(validation.labels, probabilities, validation.classes, groups=groups)
    patients, patient_labels, patient_scores = study_wise(validation.patients, validation.labels, probabilities[:, -1])
    patient_report = classification_report(patient_labels, patient_scores, validation.classes) if len(validation.classes) == 2 else None
    result = {"validation": image_report, "validation_patient_wise": patient_report, "best_epoch": best_epoch,
              "history": history, "init": init, "train_images": len(train), "validation_images": len(validation),
              "seconds": round(time.perf_counter() - started, 1), "wall_s": time.perf_counter() - started,
              "iterations": len(history), "stopped_early": len(history) < config.epochs}
    metadata = make_metadata(network, ["grey"] if config.data.channels == 1 else ["red", "green", "blue"],
                             validation.classes,
                             preprocessing={"image_size": config.data.image_size, "intensity": "scale_uint8"},
                             recipe={"task": "classification", **config_to_dict(config)}, iteration=best_epoch,
                             metrics={"accuracy": image_report["accuracy"], "auc": image_report["auc"],
                                      "macro_f1": image_report["macro"]["f1"]})
    save_checkpoint(run_dir / "best.pt", model.state_dict(), metadata)
    _write_outputs(run_dir, validation, probabilities, result)
    return result


register_task("classification", ClassificationConfig, run_classification)
