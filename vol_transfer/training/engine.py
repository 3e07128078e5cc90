"""The one training engine: an iteration-based loop shared by every task.

A task (segmentation, classification, pretext …) supplies a :class:`TrainingTask` — its model,
batches, loss, validator, optimizer factory, learning-rate schedule, optional freezing schedule and
the metadata its checkpoints carry. :class:`Trainer` owns everything else: the loop, gradient
accumulation, precision, freezing-schedule application, DDP wrapping (re-wrapped whenever the
trainable set changes), selection of the best checkpoint by a named validation metric, early
stopping, an optional plateau decay of the learning rate, ``checkpoints/{best,last}.pt``,
``metrics.csv``, TensorBoard and the progress bar. A task that thinks in epochs sets
``iterations_per_epoch`` and validates/checkpoints every that many iterations.

Everything that decides what happens next is in ``last.pt`` — model, optimizer, iteration,
batch-source state, freezing position, selection/early-stopping/plateau state and RNG states — so
a run killed at any moment and resumed produces the same weights and metrics as one never
interrupted (the scheduled learning rate is a pure function of the iteration).

The protocols:

* ``batches``: ``next(batches)`` → a dict of tensors (moved to the device by the engine), plus
  ``state_dict()`` / ``load_state_dict()`` describing the batches already consumed;
* ``loss(model, batch)`` → scalar loss of one micro-batch (run under the engine's autocast);
* ``validate(model)`` → :class:`ValidationResult` (named metrics, optional images), called in
  eval mode under ``torch.no_grad``;
* ``make_optimizer(model, previous)`` → optimizer for the currently trainable parameters;
* ``freezing`` (optional): ``apply(model, iteration) -> bool`` (trainable set changed),
  ``state_dict()``, ``load_state_dict()``.

Example (a two-parameter regression; any task plugs in the same way)::

    task = TrainingTask(model, batches, loss, validate, make_optimizer, LRSchedule(),
                        metadata={"architecture": {...}}, selection=Selection("val/loss", "min"))
    summary = Trainer(task, EngineSettings(iterations=100), run_dir).run()
    summary["selection"]   # {'metric': 'val/loss', 'mode': 'min', 'value': ..., 'iteration': ...}
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Protocol

import numpy as np
import torch

from vol_transfer.errors import CheckpointError, RecipeError, TrainingInterrupted
from vol_transfer.training.accelerator import autocast_dtype, resolve_precision
from vol_transfer.training.distributed import DistInfo, all_reduce_sum, broadcast_flags
from vol_transfer.training.interruption import StopOnSignal
from vol_transfer.training.logging import RunLogger
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.transfer.checkpoint import load_checkpoint, save_checkpoint

LAST = "last.pt"
BEST = "best.pt"
# Fault injection for the resume tests: SIGKILL this process right after the checkpoint of this iteration.
KILL_AFTER_CHECKPOINT_ENV = "VOL_TRANSFER_KILL_AFTER_CHECKPOINT"


class BatchSource(Protocol):
    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class ValidationResult:
    """Named validation metrics (``"val/…"`` keys) and optional TensorBoard images (RGB ``(3, H, W)``)."""

    metrics: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """Which validation metric selects ``best.pt`` (and drives early stopping), and its direction."""

    metric: str = "val/dice_mean"
    mode: Literal["max", "min", "last"] = "max"  # last: every validation is the new "best" (a fixed budget)

    def better(self, value: float, best: float, min_delta: float = 0.0) -> bool:
        if self.mode == "last":
            return True
        if math.isnan(value):
            return False  # a NaN never wins
        if math.isnan(best):
            return True
        return value > best + min_delta if self.mode == "max" else value < best - min_delta


@dataclass
class EngineSettings:
    iterations: int
    accumulate: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # auto: see training/accelerator.py
    channels_last: bool = False
    validate_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    patience: int | None = None  # validations without improvement before stopping
    min_delta: float = 0.0
    no_stop_before: int = 0  # no early stop before this iteration (e.g. a head-only warm-up)
    grad_clip: float | None = None
    sync_batchnorm: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    progress: bool = True


class _Stateful:
    """``state_dict`` / ``load_state_dict`` over the fields named in ``_state`` (what ``last.pt`` keeps)."""

    _state: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._state:
            setattr(self, name, state[name])


@dataclass
class BestTracker(_Stateful):
    """The best selection value so far, where it was reached, and validations since then."""

    value: float = float("nan")
    iteration: int | None = None
    stale: int = 0
    _state: ClassVar[tuple[str, ...]] = ("value", "iteration", "stale")

    def update(self, value: float, iteration: int, selection: Selection, min_delta: float) -> bool:
        """Record a validation; return True when it is the new best."""
        if selection.better(value, self.value, min_delta):
            self.value, self.iteration, self.stale = value, iteration, 0
            return True
        self.stale += 1
        return False


@dataclass
class PlateauDecay(_Stateful):
    """Multiply the learning rate by ``factor`` after ``patience`` validations without a better ``metric``.

    Like ``torch.optim.lr_scheduler.ReduceLROnPlateau``, but its state is a few numbers stored in
    ``last.pt`` and the resulting factor multiplies the iteration schedule, so resume stays exact.

    >>> plateau = PlateauDecay(Selection("val/loss", "min"), factor=0.5, patience=1)
    >>> [plateau.update(v) for v in (1.0, 0.9, 0.95, 0.97, 0.8)]
    [1.0, 1.0, 1.0, 0.5, 0.5]
    """

    selection: Selection
    factor: float = 0.1
    patience: int = 2
    scale: float = 1.0
    best: float = float("nan")
    bad: int = 0
    _state: ClassVar[tuple[str, ...]] = ("scale", "best", "bad")

    def update(self, value: float) -> float:
        if self.selection.better(value, self.best):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0
        return self.scale


@dataclass
class TrainingTask:
    """What a task gives the engine (see the module docstring for each protocol)."""

    model: torch.nn.Module
    batches: BatchSource
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    validate: Callable[[torch.nn.Module], ValidationResult]
    make_optimizer: Callable[[torch.nn.Module, torch.optim.Optimizer | None], torch.optim.Optimizer]
    schedule: LRSchedule
    metadata: dict[str, Any]
    selection: Selection = Selection()
    freezing: Any = None
    plateau: PlateauDecay | None = None
    batch_size: int = 1
    iterations_per_epoch: int | None = None


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


def trainable_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Frozen layer groups and the trainable / total parameter counts of ``model``."""
    from vol_transfer.transfer.freezing import frozen_groups

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    try:
        frozen = frozen_groups(model)
    except (RecipeError, TypeError, ValueError):  # a model without named layer groups
        frozen = []
    return {"frozen_groups": frozen, "trainable_parameters": trainable, "total_parameters": total}


def _gather_states(state: dict[str, Any], info: DistInfo) -> list[dict[str, Any]]:
    if not info.enabled:
        return [state]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "image" and channels_last and value.dim() in (4, 5):
                value = value.contiguous(memory_format=torch.channels_last_3d if value.dim() == 5 else torch.channels_last)
        moved[key] = value
    return moved


class Trainer:
    """One training run. Build it, then call :meth:`run` (``resume=True`` continues from ``last.pt``)."""

    def __init__(self, task: TrainingTask, settings: EngineSettings, run_dir: Path,
                 dist_info: DistInfo = DistInfo()) -> None:
        self.task = task
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.info = dist_info
        self.bare = task.model  # the module itself; self.model may be its DDP wrapper
        if settings.sync_batchnorm and dist_info.enabled:
            if dist_info.device.type != "cuda":
                raise RecipeError("training.sync_batchnorm", "needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)",
                                  "set training.sync_batchnorm: false for CPU runs")
            self.bare = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.bare)
        self.model: torch.nn.Module = self.bare
        self.precision = resolve_precision(settings.precision, dist_info.device)
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(dist_info.device.type) if self.precision == "fp16" else None
        self.best = BestTracker()
        self.iteration = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict[str, Any]] = []
        self.trainable_log: list[dict[str, Any]] = []
        self._logger: RunLogger | None = None
        kill = os.environ.get(KILL_AFTER_CHECKPOINT_ENV)
        self._kill_after = int(kill) if kill else None

    # ------------------------------------------------------------------ set-up / resume

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.precision)
        if dtype is not None:
            return torch.autocast(device_type=self.info.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def _wrap(self) -> None:
        """(Re-)wrap the bare module in DDP for its current trainable set (DDP fixes that set at wrap time)."""
        if not self.info.enabled:
            return
        device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        self.model = torch.nn.parallel.DistributedDataParallel(self.bare, device_ids=device_ids)

    def _apply_freezing(self, iteration: int, announce: bool = True) -> None:
        freezing = self.task.freezing
        changed = bool(freezing.apply(self.bare, iteration)) if freezing is not None else False
        if self.optimizer is None or changed:
            self.optimizer = self.task.make_optimizer(self.bare, self.optimizer)
            self._wrap()
            state = trainable_summary(self.bare) | {"iteration": iteration}
            if announce:
                self.trainable_log.append(state)
                self._say(f"iteration {iteration}: frozen {', '.join(state['frozen_groups']) or 'nothing'}; "
                          f"{state['trainable_parameters']:,} of {state['total_parameters']:,} parameters trainable")

    def _say(self, text: str) -> None:
        if self._logger is not None:
            self._logger.message(text)

    def _resume(self) -> None:
        path = self.checkpoint_dir / LAST
        checkpoint = load_checkpoint(path, map_location="cpu")
        extra = checkpoint.extra or {}
        missing = [k for k in ("optimizer", "iteration", "samplers", "best", "rng") if k not in extra]
        if missing:
            raise CheckpointError(path, f"has no training state ({', '.join(missing)})", "start a new run without --resume")
        saved_world = len(extra["samplers"])
        if saved_world != self.info.world_size:
            raise CheckpointError(path, f"was written by {saved_world} process(es), now {self.info.world_size}",
                                  f"resume with --nproc_per_node={saved_world}")
        try:
            self.bare.load_state_dict(checkpoint.state_dict)
        except RuntimeError as error:
            raise CheckpointError(path, f"does not fit this recipe's network ({_first_line(error)})",
                                  "resume with the recipe the run started with, or start a new --run-dir") from None
        self.iteration = int(extra["iteration"])
        freezing = self.task.freezing
        if freezing is not None and extra.get("freezing") is not None:
            freezing.load_state_dict(extra["freezing"])
        # the optimizer was saved after step `iteration - 1`: rebuild it for that trainable set
        self._apply_freezing(max(0, self.iteration - 1), announce=False)
        self.optimizer.load_state_dict(extra["optimizer"])
        if self.scaler is not None and extra.get("grad_scaler"):
            self.scaler.load_state_dict(extra["grad_scaler"])
        self.task.batches.load_state_dict(extra["samplers"][self.info.rank])
        self.best.load_state_dict(extra["best"])
        if self.task.plateau is not None and extra.get("plateau") is not None:
            self.task.plateau.load_state_dict(extra["plateau"])
        self.history = list(extra.get("history", []))
        self.trainable_log = list(extra.get("trainable", []))
        set_rng_state(extra["rng"])

    def _metrics_for_metadata(self, last: ValidationResult | None) -> dict[str, Any]:
        selection = self.task.selection
        metrics: dict[str, Any] = {"selection": {"metric": selection.metric, "mode": selection.mode,
                                                 "value": self.best.value, "iteration": self.best.iteration}}
        if last is not None:
            metrics["validation"] = dict(last.metrics)
        return metrics

    def _save(self, name: str, with_state: bool, metrics: dict[str, Any]) -> None:
        samplers = _gather_states(self.task.batches.state_dict(), self.info) if with_state else None
        if not self.info.is_main:
            return
        metadata = dict(self.task.metadata, iteration=self.iteration, metrics=metrics)
        extra = None
        if with_state:
            extra = {
                "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(),
                "samplers": samplers,
                "freezing": self.task.freezing.state_dict() if self.task.freezing is not None else None,
                "best": self.best.state_dict(),
                "plateau": self.task.plateau.state_dict() if self.task.plateau is not None else None,
                "rng": rng_state(),
                "history": self.history,
                "trainable": self.trainable_log,
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            }
        save_checkpoint(self.checkpoint_dir / name, self.bare.state_dict(), metadata, extra)

    # ------------------------------------------------------------------ the loop

    def _train_step(self) -> tuple[float, float, float]:
        """One optimizer step over ``accumulate`` micro-batches → (loss, step seconds, data-wait seconds)."""
        settings = self.settings
        self._apply_freezing(self.iteration)
        factor = self.task.schedule.apply(self.optimizer, self.iteration)
        if self.task.plateau is not None and self.task.plateau.scale != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor * self.task.plateau.scale
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        waited = 0.0
        loss_sum = 0.0
        for micro in range(settings.accumulate):
            before = time.perf_counter()
            batch = next(self.task.batches)
            waited += time.perf_counter() - before
            batch = _to_device(batch, self.info.device, settings.channels_last)
            last_micro = micro == settings.accumulate - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss = self.task.loss(self.model, batch) / settings.accumulate
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += float(loss.detach())
        if self.scaler is not None:
            if settings.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.bare.parameters(), settings.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.bare.parameters(), settings.grad_clip)
            self.optimizer.step()
        return loss_sum, time.perf_counter() - start, waited

    def _validate(self) -> ValidationResult:
        model = self.bare
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self.task.validate(model)
        finally:
            model.train(was_training)

    def _epoch_text(self) -> str:
        per_epoch = self.task.iterations_per_epoch
        return f" (epoch {math.ceil(self.iteration / per_epoch)})" if per_epoch else ""

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or early stop); return a summary naming the selection metric and the best step."""
        settings, selection = self.settings, self.task.selection
        logger = RunLogger(self.run_dir, settings.iterations, enabled=self.info.is_main, progress=settings.progress)
        self._logger = logger
        if resume:
            self._resume()
        else:
            self._apply_freezing(0)
        logger.start(self.iteration, resumed=resume)
        window = torch.zeros(4, dtype=torch.float64)  # loss sum, steps, step seconds, wait seconds
        stopped_early = False
        started = time.perf_counter()
        last_val: ValidationResult | None = None
        try:
            with StopOnSignal() as stop:  # SIGTERM / Ctrl-C: finish this step, write last.pt, then stop
                while self.iteration < settings.iterations:
                    loss, step_s, wait_s = self._train_step()
                    self.iteration += 1
                    window += torch.tensor([loss, 1.0, step_s, wait_s], dtype=torch.float64)
                    is_last = self.iteration == settings.iterations
                    values: dict[str, Any] = {}
                    if self.iteration % settings.log_every == 0 or is_last:
                        totals = all_reduce_sum(window, self.info)
                        steps = float(totals[1]) or 1.0
                        mean_step = float(totals[2]) / steps
                        values.update({
                            "train/loss": float(totals[0]) / steps,
                            "train/lr": self.optimizer.param_groups[0]["lr"],
                            # every process ran the same number of steps in parallel
                            "perf/samples_per_s": self.task.batch_size * settings.accumulate * self.info.world_size
                            / max(mean_step, 1e-9),
                            "perf/step_time_s": mean_step,
                            "perf/data_wait_s": float(totals[3]) / steps,
                        })
                        window.zero_()
                    is_best = False
                    if self.iteration % settings.validate_every == 0 or is_last:
                        last_val = self._validate()
                        value = float(last_val.metrics.get(selection.metric, float("nan")))
                        is_best = self.best.update(value, self.iteration, selection, settings.min_delta)
                        if self.task.plateau is not None:
                            self.task.plateau.update(float(last_val.metrics.get(self.task.plateau.selection.metric,
                                                                                float("nan"))))
                        values.update(last_val.metrics)
                        for tag, rgb in last_val.images.items():
                            logger.image(self.iteration, tag, rgb)
                        if (settings.patience is not None and self.best.stale >= settings.patience
                                and self.iteration >= settings.no_stop_before):
                            stopped_early = True
                        logger.message(f"iteration {self.iteration}{self._epoch_text()}: " + ", ".join(
                            f"{k.removeprefix('val/')} {v:.4g}" for k, v in last_val.metrics.items())
                            + (f" (new best {selection.metric})" if is_best else ""))
                    stopped_early, interrupted = broadcast_flags((stopped_early, stop.signum is not None), self.info)
                    if values:
                        logger.scalars(self.iteration, values)
                        self.history.append({k: v for k, v in values.items() if not k.startswith("perf/")}
                                            | {"iteration": self.iteration})
                    metrics = self._metrics_for_metadata(last_val)
                    if is_best:
                        self._save(BEST, with_state=False, metrics=metrics)
                    if self.iteration % settings.checkpoint_every == 0 or is_last or stopped_early or interrupted:
                        self._save(LAST, with_state=True, metrics=metrics)
                        if self._kill_after == self.iteration:
                            os.kill(os.getpid(), signal.SIGKILL)
                    if interrupted and not is_last:  # another rank may have missed the signal: SIGTERM then
                        signum = stop.signum or signal.SIGTERM
                        raise TrainingInterrupted(self.checkpoint_dir / LAST, self.iteration, signum)
                    logger.progress(self.iteration, {"loss": values.get("train/loss"), "best": self.best.value}
                                    if values else None)
                    if stopped_early:
                        logger.message(f"early stop at iteration {self.iteration}: no better {selection.metric} in "
                                       f"{settings.patience} validations (best {self.best.value:.4f} "
                                       f"at {self.best.iteration})")
                        break
                if self.best.iteration is None:
                    # the selection metric was NaN at every validation: best.pt holds the final weights
                    self._save(BEST, with_state=False, metrics=self._metrics_for_metadata(last_val))
                    logger.message(f"{selection.metric} was NaN at every validation: best.pt holds the final weights "
                                   f"(iteration {self.iteration})")
        finally:
            logger.close()
        summary: dict[str, Any] = {}
        if self.info.enabled:
            summary["replicas_in_sync"] = replicas_in_sync(self.bare)
        return summary | {
            "iterations": self.iteration,
            "precision": self.precision,
            "selection": {"metric": selection.metric, "mode": selection.mode, "value": self.best.value,
                          "iteration": self.best.iteration},
            "last_validation": dict(last_val.metrics) if last_val is not None else None,
            "trainable": self.trainable_log,
            "stopped_early": stopped_early,
            "wall_s": time.perf_counter() - started,
        }


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """Whether every DDP process holds bit-identical parameters (a per-tensor checksum compared across ranks)."""
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    device = next(model.parameters()).device
    high, low = sums.to(device), sums.to(device).clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2])
    return text if len(text) <= 200 else text[:197] + "..."
