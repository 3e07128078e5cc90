"""Pre-training without labels, then handing the encoder to a classifier.

Two pretext tasks train :class:`~vol_transfer.nets.autoencoder.ConvAutoencoder` (whose encoder is
the CBR-LargeT trunk):

- ``autoencoder`` — reconstruct the image itself;
- ``genesis`` — restore the image from a Models Genesis corruption
  (:class:`~vol_transfer.training.genesis.GenesisCorruption`).

:func:`run_pretext` writes ``pretext.pt`` (the whole autoencoder + metadata) and
:func:`transfer_encoder` copies exactly the ``encoder.*`` tensors into a classifier, reporting
what it copied, adapted and re-initialised (the transfer toolkit's report). Recipes select this with ``task: pretext``.

Example:
    >>> result = run_pretext(PretextConfig(method="genesis", epochs=2), "runs/genesis")   # doctest: +SKIP
    >>> report = transfer_encoder(load_checkpoint(result["checkpoint"]).state_dict, classifier)  # doctest: +SKIP
    >>> print(report.summary())                                                       # doctest: +SKIP
    transfer: 35 copied, 0 adapted, 2 re-initialised, 0 ignored
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from vol_transfer.errors import CheckpointError, PathLike
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.nets import build_network
from vol_transfer.recipes import config_to_dict, option, register_task
from vol_transfer.training.genesis import GenesisCorruption
from vol_transfer.training.image_data import ImageDataConfig, load_image_set, start_image_run, to_batch
from vol_transfer.transfer.adapt import TransferReport, transfer_weights

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


def _pretext_pairs(
    images: np.ndarray, method: str, corruption: GenesisCorruption, rng: np.random.Generator, hflip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    target = to_batch(images, hflip=hflip, rng=rng)
    if method == "autoencoder":
        return target, target
    corrupted = np.stack([corruption(image, rng) for image in target.numpy()])
    return torch.from_numpy(corrupted), target


def run_pretext(
    config: PretextConfig, run_dir: PathLike, *, data_root: PathLike | None = None, progress: bool = True, **_: Any
) -> dict[str, Any]:
    """Train the autoencoder on the configured pretext task; write ``pretext.pt`` and ``pretext.json``.

    ``data_root`` (the CLI's ``--data-root``) is used when the recipe's ``data.data_root`` is unset.
    """
    from torch.utils.tensorboard import SummaryWriter

    from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

    run_dir, rng, data = start_image_run(run_dir, config.seed, config.threads, config.data, data_root)
    images = load_image_set(data, config.splits, progress=progress).images
    architecture = {"name": "cbr_autoencoder", "in_channels": config.data.channels, "num_classes": config.data.channels}
    model = build_network(architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    corruption = GenesisCorruption(**config.genesis.__dict__)
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    history = []
    started = time.perf_counter()
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(len(images))
        losses = []
        for first in range(0, len(order), config.batch_size):
            inputs, targets = _pretext_pairs(images[np.sort(order[first:first + config.batch_size])],
                                             config.method, corruption, rng, config.data.hflip)
            loss = nn.functional.mse_loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            writer.add_scalar("pretext/loss", losses[-1], step)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started})
        print(f"pretext[{config.method}] epoch {epoch}/{config.epochs} mse {history[-1]['loss']:.5f}", flush=True)
    writer.close()
    metrics = {"final_mse": history[-1]["loss"], "history": history, "images": int(len(images)),
               "iterations": step, "wall_s": time.perf_counter() - started}
    checkpoint = save_checkpoint(
        run_dir / "pretext.pt",
        model.state_dict(),
        make_metadata(architecture, ["grey"] if config.data.channels == 1 else ["red", "green", "blue"], [],
                      preprocessing={"image_size": config.data.image_size, "intensity": "scale_uint8"},
                      recipe={"task": "pretext", **config_to_dict(config)}, iteration=step, metrics=metrics),
    )
    atomic_write_text(run_dir / "pretext.json", json.dumps(metrics, indent=2))
    return {"checkpoint": str(checkpoint), **metrics}


register_task("pretext", PretextConfig, run_pretext)
