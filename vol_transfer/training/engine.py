"""The iteration-based training loop, independent of where batches and validation scores come from.

:class:`Trainer` runs ``iterations`` optimizer steps (each over ``accumulate`` micro-batches),
under bf16 autocast if asked, validates every ``validate_every`` iterations, keeps the best model by
validation Dice, stops early after ``patience`` validations without improvement, and checkpoints
atomically. Everything that decides what happens next is in the checkpoint — model, optimizer,
iteration, sampler state, freezing position, early-stopping state and RNG states — so a run killed
at any moment and resumed from ``last.pt`` produces the same weights and metrics as one that was
never interrupted (the learning rate is a pure function of the iteration).

The pieces it needs are small protocols:

* ``batches``: ``next(batches)`` → ``{"image": (B,C,X,Y,Z), "label": (B,X,Y,Z), "valid"?}``
  plus ``state_dict()`` / ``load_state_dict()`` describing the batches already consumed;
* ``validate(model)`` → :class:`ValidationResult` (whole-volume Dice per class, loss, an overlay);
* ``make_optimizer(model, previous)`` → optimizer for the currently trainable parameters;
* ``freezing`` (optional): ``apply(model, iteration) -> bool`` (trainable set changed),
  ``state_dict()``, ``load_state_dict()``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.training.distributed import DistInfo, all_reduce_sum, broadcast_flag
from vol_transfer.training.logging import RunLogger
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.transfer.checkpoint import load_checkpoint, save_checkpoint

LAST = "last.pt"
BEST = "best.pt"


class BatchSource(Protocol):
    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class ValidationResult:
    """Mean validation Dice per foreground class (NaN where no case has the class), loss, overlay."""

    dice: list[float]
    loss: float
    overlay: np.ndarray | None = None  # (3, H, W) RGB, main process only

    @property
    def mean_dice(self) -> float:
        values = [d for d in self.dice if not math.isnan(d)]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class EngineSettings:
    iterations: int
    accumulate: int = 1
    precision: str = "fp32"  # "fp32" | "bf16"
    channels_last: bool = False
    validate_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    patience: int | None = None  # validations without improvement before stopping
    min_delta: float = 0.0
    grad_clip: float | None = None
    progress: bool = True


@dataclass
class EarlyStopping:
    """Best validation Dice so far and how many validations have passed without beating it."""

    best_dice: float = -1.0
    best_iteration: int = 0
    stale: int = 0

    def update(self, dice: float, iteration: int, min_delta: float) -> bool:
        """Record a validation; return True when it is the new best."""
        if not math.isnan(dice) and dice > self.best_dice + min_delta:
            self.best_dice, self.best_iteration, self.stale = dice, iteration, 0
            return True
        self.stale += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_dice": self.best_dice, "best_iteration": self.best_iteration, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_dice, self.best_iteration, self.stale = state["best_dice"], state["best_iteration"], state["stale"]


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain containers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def _gather_states(state: dict[str, Any], info: DistInfo) -> list[dict[str, Any]]:
    if not info.enabled:
        return [state]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


class Trainer:
    """One training run. Build it, then call :meth:`run` (``resume=True`` continues from ``last.pt``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[torch.nn.Module, torch.optim.Optimizer | None], torch.optim.Optimizer],
        loss_fn: Callable[..., torch.Tensor],
        batches: BatchSource,
        validate: Callable[[torch.nn.Module], ValidationResult],
        schedule: LRSchedule,
        settings: EngineSettings,
        run_dir: Path,
        metadata: dict[str, Any],
        class_names: Sequence[str],
        dist_info: DistInfo = DistInfo(),
        freezing: Any = None,
        batch_size: int = 1,
    ) -> None:
        self.model = model
        self.make_optimizer = make_optimizer
        self.loss_fn = loss_fn
        self.batches = batches
        self.validate_fn = validate
        self.schedule = schedule
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.metadata = metadata
        self.foreground_classes = list(class_names[1:])
        self.info = dist_info
        self.freezing = freezing
        self.batch_size = batch_size
        self.early = EarlyStopping()
        self.iteration = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up / resume

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.precision == "bf16":
            return torch.autocast(device_type=self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _apply_freezing(self, iteration: int) -> None:
        changed = bool(self.freezing.apply(unwrap(self.model), iteration)) if self.freezing is not None else False
        if self.optimizer is None or changed:
            self.optimizer = self.make_optimizer(unwrap(self.model), self.optimizer)

    def _resume(self) -> None:
        path = self.checkpoint_dir / LAST
        checkpoint = load_checkpoint(path, map_location="cpu")
        extra = checkpoint.extra or {}
        missing = [k for k in ("optimizer", "iteration", "samplers", "early_stopping", "rng") if k not in extra]
        if missing:
            raise CheckpointError(path, f"has no training state ({', '.join(missing)})", "start a new run without --resume")
        saved_world = len(extra["samplers"])
        if saved_world != self.info.world_size:
            raise CheckpointError(path, f"was written by {saved_world} process(es), now {self.info.world_size}",
                                  f"resume with --nproc_per_node={saved_world}")
        unwrap(self.model).load_state_dict(checkpoint.state_dict)
        self.iteration = int(extra["iteration"])
        if self.freezing is not None and extra.get("freezing") is not None:
            self.freezing.load_state_dict(extra["freezing"])
        # the optimizer was saved after step `iteration - 1`: rebuild it for that trainable set
        self._apply_freezing(max(0, self.iteration - 1))
        self.optimizer.load_state_dict(extra["optimizer"])
        self.batches.load_state_dict(extra["samplers"][self.info.rank])
        self.early.load_state_dict(extra["early_stopping"])
        self.history = list(extra.get("history", []))
        set_rng_state(extra["rng"])

    def _save(self, name: str, with_state: bool, metrics: dict[str, Any]) -> None:
        samplers = _gather_states(self.batches.state_dict(), self.info) if with_state else None
        if not self.info.is_main:
            return
        metadata = dict(self.metadata, iteration=self.iteration, metrics=metrics)
        extra = None
        if with_state:
            extra = {
                "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(),
                "samplers": samplers,
                "freezing": self.freezing.state_dict() if self.freezing is not None else None,
                "early_stopping": self.early.state_dict(),
                "rng": rng_state(),
                "history": self.history,
            }
        save_checkpoint(self.checkpoint_dir / name, unwrap(self.model).state_dict(), metadata, extra)

    # ------------------------------------------------------------------ the loop

    def _train_step(self) -> tuple[float, float, float]:
        """One optimizer step over ``accumulate`` micro-batches → (loss, step seconds, data-wait seconds)."""
        settings = self.settings
        self._apply_freezing(self.iteration)
        self.schedule.apply(self.optimizer, self.iteration)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        waited = 0.0
        loss_sum = 0.0
        for micro in range(settings.accumulate):
            before = time.perf_counter()
            batch = next(self.batches)
            waited += time.perf_counter() - before
            image = batch["image"].to(self.info.device, non_blocking=True).float()
            if settings.channels_last:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            label = batch["label"].to(self.info.device, non_blocking=True).long()  # int16 on the way
            valid = batch.get("valid")
            if valid is not None:
                valid = valid.to(self.info.device, non_blocking=True)
            last_micro = micro == settings.accumulate - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self._autocast():
                    logits = self.model(image)
                loss = self.loss_fn(logits, label, valid) / settings.accumulate
                loss.backward()
            loss_sum += float(loss.detach())
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(unwrap(self.model).parameters(), settings.grad_clip)
        self.optimizer.step()
        return loss_sum, time.perf_counter() - start, waited

    def _validate(self) -> ValidationResult:
        model = unwrap(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self.validate_fn(model)
        finally:
            model.train(was_training)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or early stop); return a summary with the best validation Dice."""
        settings = self.settings
        if resume:
            self._resume()
        else:
            self._apply_freezing(0)
        logger = RunLogger(self.run_dir, settings.iterations, self.iteration, enabled=self.info.is_main,
                           progress=settings.progress, resumed=resume)
        window_loss = torch.zeros(4, dtype=torch.float64)  # loss sum, steps, step seconds, wait seconds
        stopped_early = False
        started = time.perf_counter()
        last_val: ValidationResult | None = None
        try:
            while self.iteration < settings.iterations:
                loss, step_s, wait_s = self._train_step()
                self.iteration += 1
                window_loss += torch.tensor([loss, 1.0, step_s, wait_s], dtype=torch.float64)
                is_last = self.iteration == settings.iterations
                values: dict[str, Any] = {}
                if self.iteration % settings.log_every == 0 or is_last:
                    totals = all_reduce_sum(window_loss, self.info)
                    steps = float(totals[1]) or 1.0
                    mean_step = float(totals[2]) / steps
                    values.update({
                        "train/loss": float(totals[0]) / steps,
                        "train/lr": self.optimizer.param_groups[0]["lr"],
                        # every process ran the same number of steps in parallel
                        "perf/patches_per_s": self.batch_size * settings.accumulate * self.info.world_size / max(mean_step, 1e-9),
                        "perf/step_time_s": mean_step,
                        "perf/data_wait_s": float(totals[3]) / steps,
                    })
                    window_loss.zero_()
                is_best = False
                if self.iteration % settings.validate_every == 0 or is_last:
                    last_val = self._validate()
                    is_best = self.early.update(last_val.mean_dice, self.iteration, settings.min_delta)
                    values.update({"val/loss": last_val.loss, "val/dice_mean": last_val.mean_dice})
                    values.update({f"val/dice_{n}": d for n, d in zip(self.foreground_classes, last_val.dice)})
                    if last_val.overlay is not None:
                        logger.image(self.iteration, "val/overlay", last_val.overlay)
                    if settings.patience is not None and self.early.stale >= settings.patience:
                        stopped_early = True
                stopped_early = broadcast_flag(stopped_early, self.info)
                if values:
                    logger.scalars(self.iteration, values)
                    self.history.append({k: v for k, v in values.items() if not k.startswith("perf/")}
                                        | {"iteration": self.iteration})
                metrics = {"best_val_dice": self.early.best_dice, "best_iteration": self.early.best_iteration}
                if last_val is not None:
                    metrics.update({"val_dice": last_val.dice, "val_dice_mean": last_val.mean_dice})
                if is_best:
                    self._save(BEST, with_state=False, metrics=metrics)
                    logger.message(f"iteration {self.iteration}: new best validation Dice {self.early.best_dice:.4f}")
                if self.iteration % settings.checkpoint_every == 0 or is_last or stopped_early:
                    self._save(LAST, with_state=True, metrics=metrics)
                logger.progress(self.iteration, {"loss": values.get("train/loss"), "dice": self.early.best_dice}
                                if values else None)
                if stopped_early:
                    logger.message(f"early stop at iteration {self.iteration}: no improvement in "
                                   f"{settings.patience} validations (best {self.early.best_dice:.4f} "
                                   f"at {self.early.best_iteration})")
                    break
        finally:
            logger.close()
        return {
            "iterations": self.iteration,
            "best_val_dice": self.early.best_dice,
            "best_iteration": self.early.best_iteration,
            "last_val_dice": last_val.dice if last_val is not None else None,
            "stopped_early": stopped_early,
            "wall_s": time.perf_counter() - started,
        }

