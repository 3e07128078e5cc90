"""The GPU check: the full-size recipes measured in one prepared command, ours vs MONAI, side by side.

Three sections, each guarded (a failure is recorded in the JSON and the table, the others still
run) and checkpointed (the JSON is rewritten atomically after every measurement, so a timeout
still leaves what was measured):

1. **training** — the full-size tumour-core recipe (``recipes/brats_tc_finetune.yaml``: 96³
   windows, batch 2, full-width HighRes3DNet, real BRATS 2015 FLAIR+T1c training cases; no source
   checkpoint, nothing frozen: the full backward). OURS = the recipe's ``PatchLoader`` windows
   through the training engine (``Trainer``; ``metrics.csv`` columns ``perf_samples_per_s``,
   ``perf_step_time_s``, ``perf_data_wait_s``). MONAI = ``HighResNet`` of the same width fed by
   ``CacheDataset`` (class indices cached by ``ClassesToIndicesd``) → ``RandCropByLabelClassesd`` →
   ``RandAffined`` (cached grid), ``DataLoader`` with workers and pinned memory, metadata tracking
   off, ``DiceCELoss``, Adam. Each in fp32, bf16 autocast and bf16 + ``torch.compile``: patches/s,
   step time (forward + backward + Adam, the batch wait included, as the engine measures it) and
   the fraction of the step spent waiting for the batch. Warm-up steps (cuDNN autotuning,
   compilation, worker start-up) are excluded; the step counts are fixed.
2. **inference** — one full BRATS volume (240×240×155, 2 channels) through ``vol-transfer infer``:
   end to end in this process (``Predictor.predict_case``: load, preprocess, predict, write) and
   in a fresh process (the CLI, cold), and the prediction alone; vs MONAI
   ``sliding_window_inference`` (roi 96, overlap 0.25, Gaussian, 4 windows per batch on a GPU)
   with the same BN-fused model, on the full normalised volume and on our foreground crop; fp32 and
   bf16; ours also without channels_last (is that layout right on a GPU?).
3. **hippocampus** — a timed slice of ``recipes/hippocampus_pretrain.yaml`` (its windows, batch,
   precision and schedule; validation every ``--val-every`` iterations on the 30 validation cases,
   no early stop): the Dice reached after ``--minutes``.

Order of work (cheapest and most wanted first, so a short budget loses the least): eager training,
inference, compiled training, the hippocampus slice (which gets the time left, at most
``--minutes``). ``--budget-s`` caps the whole run: a measurement that would start too late is
skipped and recorded as such, and one that runs into the deadline stops early, marked truncated.

    python benchmarks/gpu_check.py --out results.json                      # on a GPU (~7 min)
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/x.json    # the CPU smoke test (~4 min)
    python benchmarks/gpu_check.py --cpu-compile --out compile.json         # torch.compile on CPU (see below)

``--tiny``: 24³ windows, quarter-width networks, 2 warm-up + 3 timed steps, cropped volumes, a
few hippocampus iterations, ``torch.compile(backend="aot_eager")`` (tracing without inductor's
code generation, which alone takes minutes on 2 cores); it exists so the script cannot rot
(``tests/test_gpu_check.py``).

``--cpu-compile``: what ``torch.compile`` (inductor) does on the CPU, at the CPU recipes' sizes
(``recipes/*_cpu.yaml``, 2 threads): our training step eager vs compiled vs MONAI's eager
HighResNet, and our exact whole-volume pass eager vs compiled vs MONAI's eager sliding window.
Measurements are interleaved round-robin (the machine is shared) and reported as medians, with
the load average.

On the device machine (no ``../shared/data`` there, and no MONAI/nibabel in its Python): carry
the two data folders through a link inside the repository, and the two missing wheels (49 MB in
all with the tree; SimpleITK's 53 MB wheel does not fit beside them, so there the in-process end
to end and the CLI rows record ``save_volume``'s ImportError; the prediction rows still run)::

    mkdir -p benchmarks/_scratch/gpu_check        # benchmarks/_scratch/ is git-ignored
    ln -sfn /work/shared/data benchmarks/_scratch/gpu_check/data
    python3 -m pip download --no-deps --only-binary=:all: -d benchmarks/_scratch/gpu_check/wheels \\
        monai==1.6.1 nibabel==5.4.2                # pure-Python wheels
    # device run: carry = [benchmarks/_scratch/gpu_check/data/brats2015_flair_t1c,
    #                      benchmarks/_scratch/gpu_check/data/msd_hippocampus, benchmarks/_scratch/gpu_check/wheels],
    # timeout_s = 480, command =
    python3 -m pip install -q --no-index --no-deps --target /tmp/site benchmarks/_scratch/gpu_check/wheels/*.whl \\
        && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py \\
        --data-root benchmarks/_scratch/gpu_check/data --budget-s 420 --minutes 1.5 --out $OUT/gpu_check.json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain file on a machine where the package is not installed
    sys.path.insert(0, str(ROOT))

import vol_transfer  # noqa: E402,F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch starts its threads)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vol_transfer.io.atomic import atomic_write_text  # noqa: E402

TC_RECIPE = ROOT / "recipes" / "brats_tc_finetune.yaml"
HIPPOCAMPUS_RECIPE = ROOT / "recipes" / "hippocampus_pretrain.yaml"
TC_CPU_RECIPE = ROOT / "recipes" / "brats_tc_finetune_cpu.yaml"
HIPPOCAMPUS_CPU_RECIPE = ROOT / "recipes" / "hippocampus_pretrain_cpu.yaml"
# no source checkpoint on a fresh machine: the same network from random weights, nothing frozen
NO_TRANSFER = ["transfer.source=null", "transfer.channel_adaptation=null", "transfer.freezing={kind: none}"]
INFER_CASE = "brats2015_flair_t1c/test"  # one case folder: brats_2013_pat0001_1
SECTIONS = ("training", "inference", "hippocampus")
PRECISIONS = ("fp32", "bf16", "compile")  # compile = bf16 autocast + torch.compile
GOALS = {"train_ratio": 2.0, "wait_fraction": 0.05, "predict_s": 0.1, "end_to_end_s": 1.0}


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (``FULL``: the recipes as written; ``TINY``: the CPU smoke test)."""

    window: int | None  # training window edge; None: the recipe's
    width: float | None  # network width multiplier; None: the recipe's
    warmup: int
    steps: int
    crop: tuple[int, int, int] | None  # crop every BRATS training volume around its tumour (None: whole)
    infer_crop: tuple[int, int, int] | None  # the same for the inference case (None: whole)
    hippocampus_subjects: tuple[int, int] | None  # (train, validation) cases; None: the manifest's
    hippocampus_iterations: int | None  # cap; None: the recipe's
    val_every: int
    minutes: float
    compile_backend: str
    min_compile_s: float  # budget a compiled run needs left before it starts
    roi: int  # MONAI's sliding-window size
    repeats: int  # timed inference repeats after one cold call


FULL = Sizes(None, None, warmup=8, steps=50, crop=None, infer_crop=None, hippocampus_subjects=None,
             hippocampus_iterations=None, val_every=100, minutes=2.0, compile_backend="inductor",
             min_compile_s=150.0, roi=96, repeats=3)
# The tiny inference case is small because bf16 inference on a CPU without native bf16 (an AVX2
# EPYC) runs ~40x slower than fp32: a 64x64x48 crop took 60 s per pass, 8 minutes in all.
TINY = Sizes(24, 0.25, warmup=2, steps=3, crop=(64, 64, 48), infer_crop=(32, 32, 32),
             hippocampus_subjects=(8, 4), hippocampus_iterations=6, val_every=3, minutes=0.25,
             compile_backend="aot_eager", min_compile_s=5.0, roi=32, repeats=1)


# --------------------------------------------------------------------------------------------
# Bookkeeping: the JSON, the deadline, guarded measurements
# --------------------------------------------------------------------------------------------


class Report:
    """The results so far, rewritten atomically to ``path`` after every measurement."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {"meta": meta}
        self.save()

    def section(self, name: str) -> dict[str, Any]:
        return self.data.setdefault(name, {"rows": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def error_record(error: BaseException) -> dict[str, Any]:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300],
            "traceback": "".join(lines)[-3000:]}


def guarded(report: Report, section: str, key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; store its row (or its error) under ``section.rows.key`` and save."""
    started = time.perf_counter()
    print(f"[{section}] {key} …", flush=True)
    try:
        row = measure()
    except Exception as error:  # noqa: BLE001 — one failure must not lose the other measurements
        row = error_record(error)
        print(f"[{section}] {key} FAILED: {row['error']}", flush=True)
    row["seconds_spent"] = round(time.perf_counter() - started, 2)
    report.section(section)["rows"][key] = row
    report.save()
    return row


class Deadline:
    """The ``--budget-s`` cap: seconds left, and whether a measurement may still start."""

    def __init__(self, budget_s: float) -> None:
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, needed_s: float) -> bool:
        return self.left() >= needed_s


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Recipes and data
# --------------------------------------------------------------------------------------------


def recipe_config(path: Path, sizes: Sizes, device: torch.device, workers: int, precision: str,
                  extra: list[str] = ()) -> Any:
    """The recipe at ``path`` with this run's device, sizes, workers and precision (a typed config)."""
    from vol_transfer.recipes import resolve_recipe

    overrides = [f"training.device={device.type}", "training.deterministic=false", f"sampler.workers={workers}",
                 f"training.precision={'bf16' if precision == 'compile' else precision}", *extra]
    if sizes.window is not None:
        overrides.append(f"training.window=[{sizes.window},{sizes.window},{sizes.window}]")
    if sizes.width is not None:
        overrides.append(f"network.options.width={sizes.width}")
    return resolve_recipe(path, overrides)[1]


def load_split(config: Any, root: Path, split: str, limit: int | None = None) -> list[Any]:
    """The recipe's cases of ``split`` loaded, preprocessed and relabelled, as training holds them."""
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.preprocessing.pipeline import Preprocessor
    from vol_transfer.recipes import config_to_dict
    from vol_transfer.training.segmentation_data import load_cases

    manifest = read_manifest(ROOT / config.data.manifest, data_root=root)
    preprocessor = Preprocessor.from_spec(config_to_dict(config.preprocessing))
    return load_cases(config, split, limit, manifest, preprocessor)


def crop_box(shape: tuple[int, ...], centre: np.ndarray, size: tuple[int, int, int]) -> tuple[slice, ...]:
    """A box of ``size`` (clipped to ``shape``) centred on ``centre`` as far as the volume allows."""
    starts = [int(np.clip(round(c) - s // 2, 0, max(0, d - s))) for c, s, d in zip(centre, size, shape)]
    return tuple(slice(a, a + min(s, d)) for a, s, d in zip(starts, size, shape))


def crop_cases(cases: list[Any], size: tuple[int, int, int] | None) -> list[Any]:
    """``--tiny``: each case cut to ``size`` around its foreground labels (real voxels, less work)."""
    if size is None:
        return cases
    cropped = []
    for case in cases:
        foreground = np.argwhere(case.label > 0)
        centre = foreground.mean(axis=0) if len(foreground) else np.asarray(case.label.shape) / 2
        box = crop_box(case.label.shape, centre, size)
        cropped.append(replace(case, image=np.ascontiguousarray(case.image[(slice(None), *box)]),
                               label=np.ascontiguousarray(case.label[box])))
    return cropped


# --------------------------------------------------------------------------------------------
# OURS: the training engine
# --------------------------------------------------------------------------------------------


class DeadlineBatches:
    """The engine's batch source, wrapped: ends the run at a wall-clock deadline.

    The engine has no time limit, so when the deadline has passed this makes the step being
    fetched the run's last (``settings.iterations``), which the engine then finishes normally
    (final validation, ``last.pt``).
    """

    def __init__(self, inner: Any, deadline: float | None = None) -> None:
        self.inner = inner
        self.deadline = deadline
        self.trainer: Any = None
        self.truncated = False

    def __next__(self) -> dict[str, Any]:
        if (self.deadline is not None and self.trainer is not None and not self.truncated
                and time.perf_counter() > self.deadline):
            self.trainer.settings.iterations = self.trainer.iteration + 1
            self.truncated = True
        return next(self.inner)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        iterator = getattr(self.inner, "_iterator", None)
        if iterator is not None:
            iterator.close()  # stop the loader's workers now


def engine_parts(config: Any, cases: list[Any], device: torch.device) -> dict[str, Any]:
    """What ``run_segmentation`` builds for the engine from a recipe: model, loss, optimizer, schedule."""
    from vol_transfer.nets import build_network
    from vol_transfer.training.accelerator import resolve_channels_last
    from vol_transfer.training.losses import build_loss
    from vol_transfer.training.schedules import LRSchedule
    from vol_transfer.training.segmentation import make_optimizer_factory, network_config

    classes = config.class_names()
    architecture = network_config(config, cases[0].image.shape[0], len(classes))
    channels_last = resolve_channels_last(config.training.channels_last, device)
    model = build_network(architecture).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(config.loss.kind, len(classes), config.loss.class_weights,
                         config.loss.include_background).to(device)
    s = config.optim.schedule
    schedule = LRSchedule(s.kind, config.training.iterations, s.warmup_iterations, s.power, s.min_factor, s.gamma,
                          tuple(s.milestones), s.step_size)

    def loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(net(batch["image"].float()), batch["label"].long(), batch.get("valid"))

    return {"model": model, "loss_fn": loss_fn, "loss": loss, "schedule": schedule, "classes": classes,
            "architecture": architecture, "channels_last": channels_last,
            "make_optimizer": make_optimizer_factory(config)}


def engine_batches(cases: list[Any], config: Any, device: torch.device, deadline: float | None) -> DeadlineBatches:
    """The recipe's windows as ``run_segmentation`` makes them (pinned on CUDA), ending at ``deadline``."""
    from vol_transfer.training.accelerator import pin_memory
    from vol_transfer.training.segmentation_data import make_batches

    return DeadlineBatches(make_batches(cases, config, pin_memory=pin_memory(device)), deadline)


def no_validation(model: torch.nn.Module) -> Any:
    from vol_transfer.training.engine import ValidationResult

    return ValidationResult({"val/dice_mean": float("nan")})


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def throughput_row(step_s: list[float], wait_s: list[float], batch: int, warmup: int, planned: int,
                   extra: dict[str, Any]) -> dict[str, Any]:
    """Patches/s, step time and data-wait fraction of the timed steps (warm-up already dropped)."""
    if not step_s:
        raise RuntimeError(f"no timed step finished (warm-up {warmup} steps; the budget ran out first)")
    total = sum(step_s)
    return {"patches_per_s": batch * len(step_s) / total, "step_s": total / len(step_s),
            "step_s_median": statistics.median(step_s), "wait_fraction": sum(wait_s) / total,
            "wait_s": sum(wait_s) / len(wait_s), "timed_steps": len(step_s), "warmup_steps": warmup,
            "truncated": len(step_s) < planned, "batch": batch, **extra}


def run_ours(config: Any, cases: list[Any], device: torch.device, precision: str, sizes: Sizes,
             deadline: Deadline, work: Path) -> dict[str, Any]:
    """The recipe's windows through the training engine; figures from its ``metrics.csv``."""
    from vol_transfer.training.distributed import DistInfo
    from vol_transfer.training.engine import EngineSettings, Selection, Trainer, TrainingTask

    torch.manual_seed(0)
    parts = engine_parts(config, cases, device)
    compile_s = None
    if precision == "compile":
        parts["model"].compile(backend=sizes.compile_backend)  # in place: state_dict keys unchanged
    batches = engine_batches(cases, config, device, deadline.end)
    task = TrainingTask(model=parts["model"], batches=batches, loss=parts["loss"], validate=no_validation,
                        make_optimizer=parts["make_optimizer"], schedule=parts["schedule"],
                        metadata={"architecture": parts["architecture"]}, selection=Selection("val/dice_mean", "max"),
                        batch_size=config.training.batch_size)
    total = sizes.warmup + sizes.steps
    settings = EngineSettings(iterations=total, precision=config.training.precision,
                              channels_last=parts["channels_last"], validate_every=10**9, checkpoint_every=10**9,
                              log_every=1, progress=False)
    run_dir = work / f"ours_{precision}"
    trainer = Trainer(task, settings, run_dir, DistInfo(device=device))
    batches.trainer = trainer
    try:
        summary = trainer.run()
    finally:
        batches.close()
    rows = read_metrics(run_dir)
    if precision == "compile" and rows:
        compile_s = float(rows[0]["perf_step_time_s"])  # the first step compiles forward and backward
    timed = [r for r in rows if int(r["iteration"]) > sizes.warmup]
    step_s = [float(r["perf_step_time_s"]) for r in timed]
    wait_s = [float(r["perf_data_wait_s"]) for r in timed]
    engine_rate = [float(r["perf_samples_per_s"]) for r in timed]
    return throughput_row(step_s, wait_s, config.training.batch_size, sizes.warmup, sizes.steps, {
        "engine_samples_per_s_median": statistics.median(engine_rate) if engine_rate else None,
        "first_step_s": float(rows[0]["perf_step_time_s"]) if rows else None, "compile_s": compile_s,
        "precision": summary["precision"], "channels_last": parts["channels_last"],
        "workers": config.sampler.workers, "window": list(config.training.window),
        "pin_memory": bool(getattr(batches.inner.loader, "pin_memory", False)),
        "parameters": sum(p.numel() for p in parts["model"].parameters()),
    })


# --------------------------------------------------------------------------------------------
# MONAI: HighResNet + its class-balanced crop pipeline
# --------------------------------------------------------------------------------------------


def monai_highresnet(in_channels: int, out_channels: int, width: float) -> torch.nn.Module:
    """MONAI's HighResNet with every layer's features × ``width`` (1.0 = MONAI's default = ours)."""
    from monai.networks.nets import HighResNet
    from monai.networks.nets.highresnet import DEFAULT_LAYER_PARAMS_3D

    params = [dict(p, n_features=max(1, round(p["n_features"] * width))) if "n_features" in p else dict(p)
              for p in DEFAULT_LAYER_PARAMS_3D]
    return HighResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, layer_params=params)


def monai_loader(cases: list[Any], window: tuple[int, int, int], batch: int, workers: int, pin: bool,
                 augmentation: Any) -> Any:
    """CacheDataset (class indices cached) → RandCropByLabelClassesd → RandAffined, endless DataLoader."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import ClassesToIndicesd, Compose, RandAffined, RandCropByLabelClassesd

    keys = ("image", "label")
    items = [{"image": torch.from_numpy(case.image), "label": torch.from_numpy(case.label[None])} for case in cases]
    num_classes = int(max(int(case.label.max()) for case in cases)) + 1
    steps = [ClassesToIndicesd(keys="label", num_classes=num_classes),
             RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=window, ratios=[1] * num_classes,
                                     num_classes=num_classes, num_samples=batch, indices_key="label_cls_indices",
                                     warn=False)]
    if augmentation.enabled:
        steps.append(RandAffined(keys=keys, spatial_size=window, cache_grid=True, prob=1.0,
                                 rotate_range=(math.radians(augmentation.rotation_degrees),) * 3,
                                 scale_range=(augmentation.scaling,) * 3, mode=("bilinear", "nearest"),
                                 padding_mode="zeros"))
    dataset = CacheDataset(items, transform=Compose(steps), cache_rate=1.0, copy_cache=False, progress=False)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**7)
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0, collate_fn=list_data_collate)


def run_monai(config: Any, cases: list[Any], device: torch.device, precision: str, sizes: Sizes,
              deadline: Deadline) -> dict[str, Any]:
    """MONAI's usual training loop, timed the way the engine times ours (the batch wait included)."""
    from monai.data import set_track_meta
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    width = config.network.options.width
    classes = config.class_names()
    net = monai_highresnet(cases[0].image.shape[0], len(classes), width).to(device)
    compile_s = None
    if precision == "compile":
        net.compile(backend=sizes.compile_backend)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    bf16 = precision != "fp32"
    set_track_meta(False)  # MONAI's fast-training setting: plain tensors, no metadata
    iterator = None
    try:
        loader = monai_loader(cases, tuple(config.training.window), config.training.batch_size,
                              config.sampler.workers, device.type == "cuda", config.sampler.augmentation)
        iterator = iter(loader)
        step_s, wait_s, first = [], [], None
        for step in range(sizes.warmup + sizes.steps):
            if step > sizes.warmup and not deadline.allows(0):
                break
            start = time.perf_counter()
            batch = next(iterator)
            waited = time.perf_counter() - start
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            net.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, bf16):
                loss = loss_fn(net(image), label.long())
            loss.backward()
            optimizer.step()
            float(loss.detach())  # the engine reads the loss every step too (a device sync)
            took = time.perf_counter() - start
            if step == 0:
                first = took
            if step >= sizes.warmup:
                step_s.append(took)
                wait_s.append(waited)
        if precision == "compile":
            compile_s = first
    finally:
        del iterator  # shuts the workers down
        set_track_meta(True)
    return throughput_row(step_s, wait_s, config.training.batch_size, sizes.warmup, sizes.steps, {
        "first_step_s": first, "compile_s": compile_s, "precision": "bf16" if bf16 else "fp32",
        "workers": config.sampler.workers, "window": list(config.training.window), "pin_memory": device.type == "cuda",
        "parameters": sum(p.numel() for p in net.parameters()),
    })


def training_ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """ours / MONAI patches/s per precision (where both ran)."""
    ratios = {}
    for precision in PRECISIONS:
        ours, peer = rows.get(f"ours/{precision}", {}), rows.get(f"monai/{precision}", {})
        if "patches_per_s" in ours and "patches_per_s" in peer:
            ratios[precision] = ours["patches_per_s"] / peer["patches_per_s"]
    return ratios


def training_section(report: Report, args: argparse.Namespace, sizes: Sizes, device: torch.device,
                     deadline: Deadline, work: Path, precisions: tuple[str, ...], cases: list[Any] | None) -> list[Any]:
    """Ours and MONAI in the given precisions; returns the loaded cases for the next call."""
    section = report.section("training")
    if cases is None:
        config = recipe_config(TC_RECIPE, sizes, device, args.workers, "fp32", NO_TRANSFER)
        started = time.perf_counter()
        cases = crop_cases(load_split(config, args.data_root, config.data.train_split), sizes.crop)
        section.update({"recipe": str(TC_RECIPE.relative_to(ROOT)), "cases": [c.subject_id for c in cases],
                        "case_shapes": [list(c.image.shape) for c in cases],
                        "load_s": time.perf_counter() - started, "overrides": NO_TRANSFER})
    for precision in precisions:
        config = recipe_config(TC_RECIPE, sizes, device, args.workers, precision, NO_TRANSFER)
        needed = sizes.min_compile_s if precision == "compile" else 10.0 * (device.type == "cuda")
        for side in ("ours", "monai"):
            key = f"{side}/{precision}"
            if not deadline.allows(needed):
                section["rows"][key] = skipped(f"budget: {deadline.left():.0f} s left, {needed:.0f} s needed")
                continue
            run = functools.partial(run_ours, work=work) if side == "ours" else run_monai
            guarded(report, "training", key, functools.partial(run, config, cases, device, precision, sizes, deadline))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    section["ratios"] = training_ratios(section["rows"])
    report.save()
    return cases


# --------------------------------------------------------------------------------------------
# Inference: `vol-transfer infer` vs MONAI sliding_window_inference
# --------------------------------------------------------------------------------------------


def inference_input(root: Path, sizes: Sizes, work: Path) -> Path:
    """The folder `vol-transfer infer` reads: the real test case, or (``--tiny``) a crop of its files."""
    source = root / INFER_CASE
    if sizes.infer_crop is None:
        return source
    import nibabel as nib

    case = next(p for p in sorted(source.iterdir()) if p.is_dir())
    label = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj)
    core = np.argwhere(np.isin(label, (1, 3, 4)))
    box = crop_box(label.shape, core.mean(axis=0) if len(core) else np.asarray(label.shape) / 2, sizes.infer_crop)
    target = work / "infer_input" / case.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        nib.save(nib.load(case / name).slicer[box], target / name)  # the affine follows the crop
    return target.parent


def make_checkpoint(path: Path, sizes: Sizes, device: torch.device) -> Path:
    """The tumour-core recipe's network (random weights: timing does not depend on them) with the
    metadata `vol-transfer infer` needs: channels, classes and the recipe's preprocessing."""
    from vol_transfer.nets import build_network
    from vol_transfer.preprocessing.pipeline import Preprocessor
    from vol_transfer.recipes import config_to_dict
    from vol_transfer.training.segmentation import network_config
    from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

    config = recipe_config(TC_RECIPE, sizes, device, 0, "fp32", NO_TRANSFER)
    classes = config.class_names()
    architecture = network_config(config, len(config.data.channels), len(classes))
    torch.manual_seed(0)
    model = build_network(architecture)
    preprocessing = Preprocessor.from_spec(config_to_dict(config.preprocessing)).to_spec()
    metadata = make_metadata(architecture, list(config.data.channels), classes, preprocessing=preprocessing,
                             label_mapping=config.data.label_mapping)
    save_checkpoint(path, model.state_dict(), metadata)
    return path


def timed_repeats(run: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, list[float], Any]:
    """(cold seconds, warm seconds of each repeat, last result): the first call is not in the median."""
    times, result = [], None
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[0], times[1:], result


def ours_inference(checkpoint: Path, cases: list[Any], prepared: np.ndarray, device: torch.device, bf16: bool,
                   channels_last: bool, repeats: int, work: Path) -> dict[str, Any]:
    """Prediction alone (``predict_logits`` on the prepared volume, as the Predictor calls it), then
    ``Predictor.predict_case`` end to end (what `vol-transfer infer` runs per case) in this process.

    The two are timed apart so that a failure to write (e.g. no SimpleITK, which ``save_volume``
    imports for its geometry check) still leaves the prediction figures."""
    from vol_transfer.inference.predict import InferenceOptions, predict_logits
    from vol_transfer.inference.predictor import Predictor

    options = InferenceOptions(device=str(device), bf16=bf16, channels_last=channels_last, progress=False)
    predictor = Predictor.from_checkpoint(checkpoint, options)
    cold, warm, _ = timed_repeats(lambda: predict_logits(predictor.model, prepared, options), repeats, device)
    row: dict[str, Any] = {"predict_s": statistics.median(warm), "cold_predict_s": cold, "bf16": bf16,
                           "channels_last": channels_last, "repeats": repeats, "shape": list(prepared.shape[1:])}
    out = work / f"pred_{'bf16' if bf16 else 'fp32'}_{'cl' if channels_last else 'ncdhw'}"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        cold, _, _ = timed_repeats(lambda: rows.append(predictor.predict_case(cases[0], out, overwrite=True,
                                                                              say=lambda text: None)), repeats, device)
    except Exception as error:  # noqa: BLE001 — keep the prediction figures
        row["end_to_end_error"] = error_record(error)["error"]
        return row
    warm_rows = rows[1:]
    row.update({f"{key}": statistics.median(r[key] for r in warm_rows)
                for key in ("load_s", "preprocess_s", "write_s")})
    row.update({"end_to_end_s": statistics.median(r["total_s"] for r in warm_rows), "cold_end_to_end_s": cold,
                "end_to_end_predict_s": statistics.median(r["predict_s"] for r in warm_rows),
                "strategy": rows[0]["strategy"]})
    return row


def monai_inference(model: torch.nn.Module, volume: np.ndarray, roi: int, device: torch.device, bf16: bool,
                    repeats: int) -> dict[str, Any]:
    """MONAI ``sliding_window_inference`` on ``volume`` (C, X, Y, Z), host tensor in, host logits out."""
    from monai.inferers import sliding_window_inference

    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    batch = 4 if device.type == "cuda" else 1

    def once() -> torch.Tensor:
        with torch.no_grad(), autocast(device, bf16):
            logits = sliding_window_inference(tensor.to(device), (roi,) * 3, batch, model, overlap=0.25,
                                              mode="gaussian")
        return torch.as_tensor(logits).float().cpu()

    cold, warm, _ = timed_repeats(once, repeats, device)
    return {"predict_s": statistics.median(warm), "cold_predict_s": cold, "shape": list(volume.shape[1:]),
            "roi": roi, "sw_batch_size": batch, "bf16": bf16, "repeats": repeats}


def cli_inference(checkpoint: Path, inputs: Path, device: torch.device, threads: int | None,
                  work: Path) -> dict[str, Any]:
    """``vol-transfer infer`` in a fresh process: wall time from launch to exit (imports, CUDA start included)."""
    out = work / "cli_out"
    command = [sys.executable, "-m", "vol_transfer", "infer", "--checkpoint", str(checkpoint), str(inputs),
               "--out", str(out), "--device", str(device), "--no-progress", "--overwrite"]
    if device.type == "cuda":
        command.append("--bf16")
    if threads:
        command += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"vol-transfer infer exited {done.returncode}: {last[0].strip()[:300]}")
    with (out / "inference_timings.csv").open(newline="") as handle:
        timing = next(csv.DictReader(handle))
    return {"wall_s": wall, "end_to_end_s": float(timing["total_s"]), "predict_s": float(timing["predict_s"]),
            "command": " ".join(command[1:]).replace(str(work), "TMP")}


def inference_section(report: Report, args: argparse.Namespace, sizes: Sizes, device: torch.device,
                      deadline: Deadline, work: Path) -> None:
    from vol_transfer.inference.fusion import fuse_for_inference
    from vol_transfer.inference.predictor import Predictor
    from vol_transfer.io.case_inputs import discover_cases
    from vol_transfer.preprocessing.pipeline import Preprocessor

    section = report.section("inference")
    checkpoint = make_checkpoint(work / "tc.pt", sizes, device)
    inputs = inference_input(args.data_root, sizes, work)
    predictor = Predictor.from_checkpoint(checkpoint)
    cases = discover_cases([inputs], predictor.channels)
    volume = predictor.load(cases[0])
    prepared, _ = Preprocessor.from_spec(predictor.preprocessing).apply(volume)
    full_spec = dict(predictor.preprocessing, crop_foreground=None)  # the whole grid, normalised the same way
    full, _ = Preprocessor.from_spec(full_spec).apply(volume)
    section.update({"case": cases[0].name, "volume_shape": list(volume.array.shape),
                    "cropped_shape": list(prepared.array.shape), "checkpoint_width": sizes.width or 1.0})
    roi, repeats = sizes.roi, sizes.repeats
    fused = fuse_for_inference(predictor.model).to(device)  # the same BN-fused network for MONAI
    variants: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for bf16 in (False, True):
        for channels_last in (True, False):
            name = f"ours/{'bf16' if bf16 else 'fp32'}{'' if channels_last else '/ncdhw'}"
            variants.append((name, lambda b=bf16, c=channels_last: ours_inference(
                checkpoint, cases, prepared.array, device, b, c, repeats, work)))
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        variants.append((f"monai/{tag}/full", lambda b=bf16: monai_inference(fused, full.array, roi, device, b,
                                                                             repeats)))
        variants.append((f"monai/{tag}/crop", lambda b=bf16: monai_inference(fused, prepared.array, roi, device, b,
                                                                             repeats)))
    variants.append(("ours/cli", lambda: cli_inference(checkpoint, inputs, device, args.threads, work)))
    for name, measure in variants:
        if not deadline.allows(5.0):
            section["rows"][name] = skipped(f"budget: {deadline.left():.0f} s left")
            continue
        guarded(report, "inference", name, measure)
    section["ratios"] = inference_ratios(section["rows"])
    report.save()


def inference_ratios(rows: dict[str, Any]) -> dict[str, float]:
    """MONAI time / our time (above 1: ours faster), per precision, prediction alone and end to end."""
    ratios = {}
    for tag in ("fp32", "bf16"):
        ours = rows.get(f"ours/{tag}", {})
        for where in ("full", "crop"):
            peer = rows.get(f"monai/{tag}/{where}", {})
            if "predict_s" in ours and "predict_s" in peer:
                ratios[f"{tag}/monai_{where}_over_ours_predict"] = peer["predict_s"] / ours["predict_s"]
                if "end_to_end_s" in ours:
                    ratios[f"{tag}/monai_{where}_over_ours_end_to_end"] = peer["predict_s"] / ours["end_to_end_s"]
    return ratios


# --------------------------------------------------------------------------------------------
# The hippocampus recipe, a timed slice
# --------------------------------------------------------------------------------------------


class RecordingValidator:
    """The recipe's whole-volume validator, recording when (minutes since the start) each result came."""

    def __init__(self, inner: Callable[[torch.nn.Module], Any]) -> None:
        self.inner = inner
        self.started = time.perf_counter()
        self.trainer: Any = None
        self.curve: list[dict[str, Any]] = []

    def __call__(self, model: torch.nn.Module) -> Any:
        began = time.perf_counter()
        result = self.inner(model)  # the first pass over each new shape also pays cuDNN's autotuning
        self.curve.append({"minutes": (time.perf_counter() - self.started) / 60,
                           "validation_s": time.perf_counter() - began,
                           "iteration": self.trainer.iteration if self.trainer is not None else None,
                           **{k.removeprefix("val/"): v for k, v in result.metrics.items()}})
        return result


def hippocampus_slice(args: argparse.Namespace, sizes: Sizes, device: torch.device, deadline: Deadline,
                      work: Path) -> dict[str, Any]:
    from vol_transfer.training.distributed import DistInfo
    from vol_transfer.training.engine import EngineSettings, Selection, Trainer, TrainingTask
    from vol_transfer.training.segmentation import WholeVolumeValidator

    from vol_transfer.recipes import resolve_recipe

    precision = resolve_recipe(HIPPOCAMPUS_RECIPE)[1].training.precision  # the recipe's own (bf16)
    extra = [f"validation.every={sizes.val_every}"]
    if sizes.hippocampus_iterations is not None:
        extra.append(f"training.iterations={sizes.hippocampus_iterations}")
    config = recipe_config(HIPPOCAMPUS_RECIPE, sizes, device, args.workers, precision, extra)
    started = time.perf_counter()
    train_limit, val_limit = sizes.hippocampus_subjects or (None, None)
    train = load_split(config, args.data_root, config.data.train_split, train_limit)
    val = load_split(config, args.data_root, config.data.validation_split, val_limit)
    load_s = time.perf_counter() - started
    torch.manual_seed(config.training.seed)
    parts = engine_parts(config, train, device)
    info = DistInfo(device=device)
    validator = RecordingValidator(WholeVolumeValidator(val, parts["classes"], parts["loss_fn"],
                                                        config.validation.window, config.validation.overlap, info,
                                                        parts["channels_last"]))
    seconds = max(1.0, min(args.minutes * 60, deadline.left() - 10))
    batches = engine_batches(train, config, device, time.perf_counter() + seconds)
    task = TrainingTask(model=parts["model"], batches=batches, loss=parts["loss"], validate=validator,
                        make_optimizer=parts["make_optimizer"], schedule=parts["schedule"],
                        metadata={"architecture": parts["architecture"]}, selection=Selection("val/dice_mean", "max"),
                        batch_size=config.training.batch_size)
    settings = EngineSettings(iterations=config.training.iterations, precision=config.training.precision,
                              channels_last=parts["channels_last"], validate_every=config.validation.every,
                              checkpoint_every=10**9, log_every=config.training.log_every, patience=None,
                              progress=False)
    trainer = Trainer(task, settings, work / "hippocampus", info)
    batches.trainer = validator.trainer = trainer
    validator.started = time.perf_counter()
    try:
        summary = trainer.run()
    finally:
        batches.close()
    if not validator.curve:
        raise RuntimeError("no validation ran")
    last = validator.curve[-1]
    return {"dice_mean": last["dice_mean"], "best_dice_mean": summary["selection"]["value"],
            "validation_s": sum(point["validation_s"] for point in validator.curve),
            "minutes": last["minutes"], "minutes_asked": args.minutes, "iterations": summary["iterations"],
            "iterations_per_s": summary["iterations"] / max(summary["wall_s"], 1e-9),
            "recipe_iterations": config.training.iterations if sizes.hippocampus_iterations is None else None,
            "stopped_by_clock": batches.truncated, "train_cases": len(train), "validation_cases": len(val),
            "load_s": load_s, "precision": summary["precision"], "window": list(config.training.window),
            "batch": config.training.batch_size, "validate_every": config.validation.every, "curve": validator.curve}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _problem(row: dict[str, Any]) -> str | None:
    if "error" in row:
        return f"ERROR {row['error']}"
    if "skipped" in row:
        return f"skipped ({row['skipped']})"
    return None


def table_rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """``(section, measure, ours, MONAI, ours vs MONAI, goal)`` rows of the one table."""
    out: list[tuple[str, ...]] = []
    training = data.get("training", {})
    rows, ratios = training.get("rows", {}), training.get("ratios", {})
    for precision in PRECISIONS:
        ours, peer = rows.get(f"ours/{precision}"), rows.get(f"monai/{precision}")
        if ours is None and peer is None:
            continue
        label = f"training {precision}"
        bad = [(side, _problem(r)) for side, r in (("ours", ours or {}), ("MONAI", peer or {})) if _problem(r or {})]
        for side, text in bad:
            out.append((label, side, text, "", "", ""))
        if bad:
            continue
        ratio = ratios.get(precision)
        goal = "≥ 2× MONAI" + (" ✓" if ratio is not None and ratio >= GOALS["train_ratio"] else " ✗")
        out.append((label, "patches/s", _fmt(ours["patches_per_s"]), _fmt(peer["patches_per_s"]),
                    f"{ratio:.2f}×" if ratio else "–", goal))
        out.append((label, "step s (fwd+bwd+Adam)", _fmt(ours["step_s"]), _fmt(peer["step_s"]),
                    f"{ours['step_s'] / peer['step_s']:.2f}×", ""))
        wait_ok = ours["wait_fraction"] < GOALS["wait_fraction"]
        out.append((label, "data wait % of step", f"{100 * ours['wait_fraction']:.2f}",
                    f"{100 * peer['wait_fraction']:.2f}", "", "< 5 %" + (" ✓" if wait_ok else " ✗")))
        if precision == "compile":
            out.append((label, "first step s (compiles)", _fmt(ours.get("compile_s")), _fmt(peer.get("compile_s")),
                        "", ""))
    if "error" in training:
        out.append(("training", "section", f"ERROR {training['error']}", "", "", ""))
    inference = data.get("inference", {})
    rows = inference.get("rows", {})
    for name, row in rows.items():
        if _problem(row):
            out.append(("inference", name, _problem(row), "", "", ""))
    for tag in ("fp32", "bf16"):
        ours, full, crop = (rows.get(k, {}) for k in (f"ours/{tag}", f"monai/{tag}/full", f"monai/{tag}/crop"))
        if "predict_s" not in ours:
            continue
        label = f"inference {tag}"
        predict_ok = ours["predict_s"] < GOALS["predict_s"]
        if "predict_s" in full:
            out.append((label, "prediction s (MONAI: full volume)", _fmt(ours["predict_s"]), _fmt(full["predict_s"]),
                        f"{full['predict_s'] / ours['predict_s']:.1f}× faster",
                        "< 0.1 s" + (" ✓" if predict_ok else " ✗")))
        if "predict_s" in crop:
            out.append((label, "prediction s (MONAI: our crop)", _fmt(ours["predict_s"]), _fmt(crop["predict_s"]),
                        f"{crop['predict_s'] / ours['predict_s']:.1f}× faster", ""))
        if "end_to_end_s" in ours:
            e2e_ok = ours["end_to_end_s"] < GOALS["end_to_end_s"]
            out.append((label, "end to end s (ours: load+prep+predict+write; MONAI: prediction, full)",
                        _fmt(ours["end_to_end_s"]), _fmt(full.get("predict_s")), "",
                        "< 1 s" + (" ✓" if e2e_ok else " ✗")))
        else:
            out.append((label, "end to end", f"ERROR {ours.get('end_to_end_error')}", "", "", ""))
        layout = rows.get(f"ours/{tag}/ncdhw", {})
        if "predict_s" in layout:
            out.append((label, "prediction s, NCDHW layout (no channels_last)", _fmt(layout["predict_s"]), "",
                        f"{layout['predict_s'] / ours['predict_s']:.2f}× channels_last", ""))
    cli = rows.get("ours/cli", {})
    if "wall_s" in cli:
        out.append(("inference cli", "fresh process wall s / its own total_s", f"{cli['wall_s']:.2f} / "
                    f"{cli['end_to_end_s']:.2f}", "", "", ""))
    if "error" in inference:
        out.append(("inference", "section", f"ERROR {inference['error']}", "", "", ""))
    hippocampus = data.get("hippocampus", {}).get("rows", {}).get("slice")
    if hippocampus is not None:
        if _problem(hippocampus):
            out.append(("hippocampus", "slice", _problem(hippocampus), "", "", ""))
        else:
            out.append(("hippocampus", f"val Dice after {hippocampus['minutes']:.2f} min "
                        f"({hippocampus['iterations']} it, {hippocampus['iterations_per_s']:.1f} it/s, "
                        f"{hippocampus['validation_s']:.0f} s validating)",
                        f"{hippocampus['dice_mean']:.3f} (best {hippocampus['best_dice_mean']:.3f})", "", "", ""))
    return out


def print_table(data: dict[str, Any]) -> None:
    meta = data["meta"]
    print(f"\ngpu_check on {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
          f"{'tiny' if meta['tiny'] else 'full size'}, {meta.get('wall_s', 0):.0f} s, "
          f"load average {meta.get('load_end')}")
    header = ("section", "measure", "ours", "MONAI", "ours vs MONAI", "goal")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table_rows(data):
        print("| " + " | ".join(row) + " |")


# --------------------------------------------------------------------------------------------
# --cpu-compile: what torch.compile (inductor) does on the CPU
# --------------------------------------------------------------------------------------------


def round_robin(label: str, runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, dict[str, Any]]:
    """Call each run once per round (the order reversed every other round: a shared machine drifts);
    their seconds per call and medians."""
    rows: dict[str, dict[str, Any]] = {name: {"times": []} for name in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            rows[name]["times"].append(runs[name]())
        print(f"[cpu_compile] {label} round {r + 1}: " + ", ".join(f"{n} {rows[n]['times'][-1]:.3f} s" for n in runs)
              + f", load {load_average()}", flush=True)
    for row in rows.values():
        row["median_s"] = statistics.median(row["times"])
    return rows


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compile_training(args: argparse.Namespace, path: Path, overrides: list[str]) -> dict[str, Any]:
    """One CPU recipe's training step (engine-like: channels_last batch, padding-masked loss, Adam) on
    the same real batches: ours eager, ours ``torch.compile``d (inductor), MONAI's HighResNet eager."""
    from vol_transfer.recipes import resolve_recipe
    from vol_transfer.training.segmentation_data import make_batches

    device = torch.device("cpu")
    config = resolve_recipe(path, overrides)[1]
    cases = load_split(config, args.data_root, config.data.train_split, config.data.train_subjects)
    batches = make_batches(cases, config)
    pool = [next(batches) for _ in range(4)]
    runners: dict[str, Any] = {}
    for variant in ("ours eager", "ours compiled", "MONAI eager"):
        torch.manual_seed(0)
        parts = engine_parts(config, cases, device)
        model, layout = parts["model"], parts["channels_last"]
        if variant == "ours compiled":
            model.compile()
        elif variant == "MONAI eager":  # MONAI's own module, in its default memory layout
            model = monai_highresnet(cases[0].image.shape[0], len(parts["classes"]), config.network.options.width)
            layout = False
        optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        runners[variant] = (model, parts["loss"], optimizer, layout, iter(range(10**9)))

    def step(variant: str) -> float:
        model, loss, optimizer, layout, counter = runners[variant]
        batch = dict(pool[next(counter) % len(pool)])
        if layout:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last_3d)

        def once() -> None:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss(model, batch).backward()
            optimizer.step()

        return seconds(once)

    load_start = load_average()
    first = {variant: step(variant) for variant in runners}  # compiles forward + backward for the compiled one
    for variant in runners:
        step(variant)  # a second warm-up step (allocator, oneDNN primitive caches)
    rows = round_robin(path.stem, {v: (lambda v=v: step(v)) for v in runners}, args.rounds)
    for variant, row in rows.items():
        row["first_step_s"] = first[variant]
    eager, compiled = rows["ours eager"]["median_s"], rows["ours compiled"]["median_s"]
    saved = eager - compiled
    return {"recipe": str(path.relative_to(ROOT)), "batch_shape": list(pool[0]["image"].shape), "rows": rows,
            "compiled_over_eager": compiled / eager, "monai_over_ours_eager": rows["MONAI eager"]["median_s"] / eager,
            "break_even_steps": (first["ours compiled"] - eager) / saved if saved > 0 else None,
            "load_start": load_start, "load_end": load_average()}


def compile_inference(args: argparse.Namespace) -> dict[str, Any]:
    """The BRATS test case, prepared by the CPU fine-tuning recipe: our exact whole-volume pass eager
    and compiled, vs MONAI's HighResNet in its sliding window (roi 96, overlap 0.25, Gaussian)."""
    from monai.inferers import sliding_window_inference

    from vol_transfer.inference.predict import InferenceOptions, inference_copy, predict_logits
    from vol_transfer.recipes import resolve_recipe

    device = torch.device("cpu")
    config = resolve_recipe(TC_CPU_RECIPE, NO_TRANSFER)[1]
    (case,) = load_split(config, args.data_root, "test")
    parts = engine_parts(config, [case], device)
    model = parts["model"].eval()
    options = InferenceOptions(mode="whole", device="cpu")
    runner = inference_copy(model, options, device)  # what predict_logits runs: BN folded, channels_last
    compiled = torch.compile(inference_copy(model, options, device))
    peer = monai_highresnet(case.image.shape[0], len(parts["classes"]), config.network.options.width).eval()
    tensor = torch.from_numpy(case.image)[None]
    cl_tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
    passes: dict[str, Callable[[], Any]] = {
        "ours predict_logits (whole, eager)": lambda: predict_logits(model, case.image, options),
        "ours fused pass eager": lambda: runner(cl_tensor),
        "ours fused pass compiled": lambda: compiled(cl_tensor),
        "MONAI sliding window eager (roi 96)": lambda: sliding_window_inference(tensor, (96, 96, 96), 1, peer,
                                                                               overlap=0.25, mode="gaussian"),
    }
    load_start = load_average()
    with torch.no_grad():
        first = {variant: seconds(run) for variant, run in passes.items()}  # the compiled one compiles here
        rows = round_robin("inference", {v: (lambda run=run: seconds(run)) for v, run in passes.items()},
                           args.infer_rounds)
        # another case has another shape: what the compiled pass costs on its first call there
        other = cl_tensor[..., 8:, 8:, 8:].contiguous(memory_format=torch.channels_last_3d)
        second = {"shape": list(other.shape[1:]), "compiled_first_s": seconds(lambda: compiled(other)),
                  "compiled_s": seconds(lambda: compiled(other)), "eager_s": seconds(lambda: runner(other))}
    for variant, row in rows.items():
        row["first_s"] = first[variant]
    eager = rows["ours fused pass eager"]["median_s"]
    return {"shape": list(case.image.shape), "rows": rows, "second_shape": second,
            "compiled_over_eager": rows["ours fused pass compiled"]["median_s"] / eager,
            "monai_over_ours_eager": rows["MONAI sliding window eager (roi 96)"]["median_s"] / eager,
            "load_start": load_start, "load_end": load_average()}


def cpu_compile(args: argparse.Namespace, report: Report) -> None:
    """``--cpu-compile``: each measurement guarded and saved as it finishes."""
    jobs = {"training/brats_tc": lambda: compile_training(args, TC_CPU_RECIPE, NO_TRANSFER),
            "training/hippocampus": lambda: compile_training(args, HIPPOCAMPUS_CPU_RECIPE, ["data.train_subjects=16"]),
            "inference": lambda: compile_inference(args)}
    for key, job in jobs.items():
        guarded(report, "cpu_compile", key, job)


def print_cpu_compile(data: dict[str, Any]) -> None:
    print(f"\ntorch.compile (inductor) on CPU, {data['meta']['threads']} threads, torch {data['meta']['torch']}, "
          f"{data['meta'].get('wall_s', 0):.0f} s")
    print("| measurement | variant | median s | first call s | × ours eager | load avg start → end |")
    print("|---|---|---|---|---|---|")
    for key, result in data.get("cpu_compile", {}).get("rows", {}).items():
        if _problem(result):
            print(f"| {key} | {_problem(result)} | | | | |")
            continue
        reference = result["rows"].get("ours eager", result["rows"].get("ours fused pass eager"))
        what = f"{key} {'×'.join(map(str, result.get('batch_shape', result.get('shape', []))))}"
        for variant, row in result["rows"].items():
            first = row.get("first_step_s", row.get("first_s"))
            print(f"| {what} | {variant} | {row['median_s']:.3f} | {first:.2f} | "
                  f"{row['median_s'] / reference['median_s']:.2f} | {result['load_start']} → {result['load_end']} |")
        second = result.get("second_shape")
        if second:
            print(f"| inference {'×'.join(map(str, second['shape']))} (another shape) | ours fused pass compiled | "
                  f"{second['compiled_s']:.3f} | {second['compiled_first_s']:.2f} (recompiles) | "
                  f"{second['compiled_s'] / second['eager_s']:.2f} (eager {second['eager_s']:.3f}) | |")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="see the module docstring for what is measured and how")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON results (written atomically)")
    parser.add_argument("--tiny", action="store_true", help="small windows and networks, a few steps (CPU smoke test)")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="measure torch.compile on CPU instead (see the docstring)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one)")
    parser.add_argument("--data-root", type=Path, default=None, help="folder holding brats2015_flair_t1c/ and "
                        "msd_hippocampus/ (default: $VOL_TRANSFER_DATA, else ../shared/data)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="overall cap in seconds (default 540)")
    parser.add_argument("--minutes", type=float, default=None, help="hippocampus slice length (default 2; tiny 0.25)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"training: comma list of {PRECISIONS}")
    parser.add_argument("--val-every", type=int, default=None,
                        help="hippocampus slice: validate every N iterations (default 100; tiny 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per run (default 50; tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8; tiny 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers for ours and MONAI (default: min(8, cores - 2) on CUDA, 0 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed inference repeats after one cold call "
                        "(default 3; tiny 1)")
    parser.add_argument("--rounds", type=int, default=6, help="--cpu-compile: training rounds (default 6)")
    parser.add_argument("--infer-rounds", type=int, default=3, help="--cpu-compile: inference rounds (default 3)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; tiny aot_eager)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2 on CPU)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cpu" and args.threads is None:
        args.threads = 2
    if args.workers is None:
        args.workers = min(8, max(0, (os.cpu_count() or 2) - 2)) if args.device.type == "cuda" else 0
    from vol_transfer.io.data_root import resolve_data_root

    args.data_root = resolve_data_root(args.data_root)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    unknown += sorted(set(args.precisions.split(",")) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown section/precision {unknown}")
    return args


def meta_of(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    cuda = args.device.type == "cuda"
    return {"device": str(args.device), "device_name": torch.cuda.get_device_name(args.device) if cuda else
            platform.processor() or platform.machine(), "torch": torch.__version__, "python": platform.python_version(),
            "tiny": bool(args.tiny), "sizes": sizes.__dict__, "threads": torch.get_num_threads(),
            "workers": args.workers, "cpu_count": os.cpu_count(), "budget_s": args.budget_s,
            "load_start": load_average(), "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "tf32": torch.backends.cuda.matmul.allow_tf32}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else FULL
    sizes = replace(sizes, steps=args.steps or sizes.steps,
                    warmup=args.warmup if args.warmup is not None else sizes.warmup,
                    compile_backend=args.compile_backend or sizes.compile_backend,
                    repeats=args.repeats or sizes.repeats,
                    val_every=args.val_every or sizes.val_every)
    args.minutes = sizes.minutes if args.minutes is None else args.minutes
    if args.device.type == "cuda":
        from vol_transfer.training.accelerator import configure_backends

        configure_backends(args.device, deterministic=False)  # cuDNN autotuning + TF32, for ours and MONAI alike
    import warnings

    warnings.filterwarnings("ignore", module="monai")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        report = Report(args.out, meta_of(args, sizes))
        if args.cpu_compile:
            cpu_compile(args, report)
            report.data["meta"].update(wall_s=time.perf_counter() - began, load_end=load_average())
            report.save()
            print_cpu_compile(report.data)
            return 0
        deadline = Deadline(args.budget_s)
        sections = args.sections.split(",")
        precisions = tuple(p for p in PRECISIONS if p in args.precisions.split(","))
        cases = None

        def section(name: str, run: Callable[[], Any]) -> Any:
            try:
                return run()
            except Exception as error:  # noqa: BLE001 — a section's set-up failed: record it, go on
                report.section(name).update(error_record(error))
                report.save()
                print(f"[{name}] FAILED: {report.data[name]['error']}", flush=True)
                return None

        if "training" in sections:
            cases = section("training", lambda: training_section(
                report, args, sizes, args.device, deadline, work, tuple(p for p in precisions if p != "compile"), None))
        if "inference" in sections:
            section("inference", lambda: inference_section(report, args, sizes, args.device, deadline, work))
        if "training" in sections and "compile" in precisions and "error" not in report.section("training"):
            section("training", lambda: training_section(report, args, sizes, args.device, deadline, work,
                                                         ("compile",), cases))
        if "hippocampus" in sections:
            if deadline.allows(20.0):
                guarded(report, "hippocampus", "slice",
                        lambda: hippocampus_slice(args, sizes, args.device, deadline, work))
            else:
                report.section("hippocampus")["rows"]["slice"] = skipped(f"budget: {deadline.left():.0f} s left")
        report.data["meta"].update(wall_s=time.perf_counter() - began, load_end=load_average(),
                                   complete=all(s in report.data for s in sections))
        report.save()
        print_table(report.data)
        print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
