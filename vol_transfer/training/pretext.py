"""Pre-training without labels, then handing the encoder to a classifier.

Two pretext tasks train :class:`~vol_transfer.nets.autoencoder.ConvAutoencoder` (whose encoder is
the CBR-LargeT trunk):

- ``autoencoder`` — reconstruct the image itself;
- ``genesis`` — restore the image from a Models Genesis corruption
  (:class:`~vol_transfer.training.genesis.GenesisCorruption`).

:func:`run_pretext` trains it with the shared engine (``RUN/checkpoints/best.pt`` holds the whole
autoencoder + metadata) and :func:`transfer_encoder` copies exactly the ``encoder.*`` tensors into a
classifier, reporting what it copied, adapted and re-initialised (the transfer toolkit's report).
Recipes select this with ``task: pretext``.

Example::

    result = run_pretext(PretextConfig(method="genesis", epochs=2), "runs/genesis")
    report = transfer_encoder(load_checkpoint(result["checkpoint"]).state_dict, classifier)
    print(report.summary())   # transfer: 35 copied, 0 adapted, 2 re-initialised, 0 ignored
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from vol_transfer.errors import CheckpointError, PathLike
from vol_transfer.nets import build_network
from vol_transfer.recipes import config_to_dict, option, register_task
from vol_transfer.training.engine import EngineSettings, Selection, Trainer, TrainingTask, ValidationResult
from vol_transfer.training.genesis import GenesisCorruption
from vol_transfer.training.image_augmentation import ImageAugmentation
from vol_transfer.training.image_data import (
    ImageBatches,
    ImageDataConfig,
    image_preprocessing,
    load_image_set,
    to_batch,
    with_data_root,
)
from vol_transfer.training.network_spec import CBRAutoencoderSpec
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.transfer.adapt import TransferReport, transfer_weights
from vol_transfer.transfer.checkpoint import make_metadata

ENCODER_PREFIX = "encoder."


@dataclass
class GenesisOptions:
    """Probabilities of the Models Genesis corruptions (see :class:`GenesisCorruption`)."""

    nonlinear_probability: float = option(0.9, ge=0, le=1)
    shuffle_probability: float = option(0.5, ge=0, le=1)
    paint_probability: float = option(0.9, ge=0, le=1)
    inpaint_share: float = option(0.2, ge=0, le=1)
    shuffle_blocks: int = option(200, ge=1, help="blocks per image for local pixel shuffling")
    shuffle_block_size: int = option(8, ge=1)


@dataclass
class PretextConfig:
    """A ``task: pretext`` recipe: which images, which pretext, how long."""

    method: Literal["autoencoder", "genesis"] = "autoencoder"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    splits: list[str] = option(["train"], min_len=1, help="manifest splits whose images are used (labels ignored)")
    genesis: GenesisOptions = field(default_factory=GenesisOptions)
    epochs: int = option(5, ge=1)
    batch_size: int = option(32, ge=1)
    lr: float = option(1e-3, gt=0, help="Adam learning rate")
    seed: int = 0
    threads: int = option(2, ge=1)


def transfer_encoder(
    source_state: Mapping[str, torch.Tensor], target: nn.Module, prefix: str = ENCODER_PREFIX,
    channels: str = "mean", where: PathLike = "encoder transfer",
) -> TransferReport:
    """Copy the ``prefix*`` tensors of ``source_state`` into ``target`` with the transfer API.

    Only source names under ``prefix`` are offered to :func:`vol_transfer.transfer.adapt.transfer_weights`,
    so the autoencoder's decoder is never looked at; the target's head (its last layer group) keeps
    its fresh initialisation; input convolutions with another channel count are adapted with
    ``channels`` (``mean``: RGB → grey sums the kernels). ``prefix=""`` offers every tensor.

    Raises:
        CheckpointError: if the source has no ``prefix*`` tensor the target knows (wrong file or
            architecture), or a body tensor of the target is missing or cannot be adapted.
    """
    selected = {name: tensor for name, tensor in source_state.items() if name.startswith(prefix)}
    known = target.state_dict().keys()
    if not any(name in known for name in selected):
        raise CheckpointError(where, f"no '{prefix}*' tensor of the source fits the target",
                              "pre-train the same architecture (cbr_autoencoder ↔ cbr_large_t) or set the prefix")
    return transfer_weights(target, selected, channels=channels, head="auto", where=where)


def _pretext_batch(method: str, corruption: GenesisCorruption, hflip: bool, augment: ImageAugmentation | None = None):
    """``make_batch`` for :class:`ImageBatches`: the (augmented) target image and the network's input
    (itself, or corrupted)."""

    def make(images: np.ndarray, _labels: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        target = to_batch(images, hflip=hflip, rng=rng, augment=augment)
        if method == "autoencoder":
            return {"image": target, "target": target}
        corrupted = np.stack([corruption(image, rng) for image in target.numpy()])
        return {"image": torch.from_numpy(corrupted), "target": target}

    return make


class ReconstructionValidator:
    """Mean squared restoration error on a fixed sample of the pre-training images.

    A pretext task needs no held-out generalisation claim: this monitors convergence and selects
    ``best.pt``; the corruptions of the sample are drawn once, so every validation sees the same inputs.
    """

    def __init__(self, images: np.ndarray, method: str, corruption: GenesisCorruption, seed: int,
                 size: int = 256, batch_size: int = 64) -> None:
        rng = np.random.default_rng([seed, 2])
        chosen = np.sort(rng.choice(len(images), size=min(size, len(images)), replace=False))
        batch = _pretext_batch(method, corruption, hflip=False)(images[chosen], np.zeros(len(chosen)), rng)
        self.inputs, self.targets, self.batch_size = batch["image"], batch["target"], batch_size

    def __call__(self, model: nn.Module) -> ValidationResult:
        total = 0.0
        for first in range(0, len(self.inputs), self.batch_size):
            inputs = self.inputs[first:first + self.batch_size].to(next(model.parameters()).device)
            targets = self.targets[first:first + self.batch_size].to(inputs.device)
            total += float(nn.functional.mse_loss(model(inputs).float(), targets, reduction="sum"))
        return ValidationResult({"val/mse": total / self.targets.numel()})


def run_pretext(
    config: PretextConfig, run_dir: PathLike, *, resume: bool = False, data_root: PathLike | None = None,
    progress: bool = True, **_: Any,
) -> dict[str, Any]:
    """Train the autoencoder on the configured pretext task with the training engine.

    The run folder has the engine's layout (``checkpoints/{best,last}.pt``, ``metrics.csv``,
    ``tensorboard/``); ``best.pt`` (lowest restoration MSE) holds the whole autoencoder and its
    metadata. ``data_root`` (the CLI's ``--data-root``) is used when ``data.data_root`` is unset.
    """
    from vol_transfer.training.engine import seed_everything

    run_dir = Path(run_dir)
    seed_everything(config.seed, deterministic=False)
    torch.set_num_threads(config.threads)
    data = with_data_root(config.data, data_root)
    images = load_image_set(data, config.splits, progress=progress).images
    architecture = CBRAutoencoderSpec().architecture(in_channels=data.channels, num_classes=data.channels)
    model = build_network(architecture)
    corruption = GenesisCorruption(**config.genesis.__dict__)
    batches = ImageBatches(images, np.zeros(len(images), dtype=np.int64), config.batch_size, "none", config.seed,
                           make_batch=_pretext_batch(config.method, corruption, data.hflip, data.augment))
    metadata = make_metadata(architecture, ["grey"] if data.channels == 1 else ["red", "green", "blue"], [],
                             preprocessing=image_preprocessing(data),
                             recipe={"task": "pretext", **config_to_dict(config)})
    task = TrainingTask(
        model=model, batches=batches,
        loss=lambda net, batch: nn.functional.mse_loss(net(batch["image"]), batch["target"]),
        validate=ReconstructionValidator(images, config.method, corruption, config.seed),
        make_optimizer=lambda net, _previous: torch.optim.Adam(net.parameters(), lr=config.lr),
        schedule=LRSchedule(), metadata=metadata | {"task": "pretext"}, selection=Selection("val/mse", "min"),
        batch_size=batches.batch_size, iterations_per_epoch=batches.per_epoch,
    )
    per_epoch = batches.per_epoch
    settings = EngineSettings(iterations=config.epochs * per_epoch, validate_every=per_epoch,
                              checkpoint_every=per_epoch, log_every=max(1, min(10, per_epoch)), progress=progress)
    summary = Trainer(task, settings, run_dir).run(resume=resume)
    summary.update({"task": "pretext", "images": int(len(images)), "epochs": config.epochs,
                    "checkpoint": str(run_dir / "checkpoints" / "best.pt")})
    return summary


register_task("pretext", PretextConfig, run_pretext)
