"""Training step end to end (loader + HighRes3DNet forward/backward/Adam step): worker transport
``ring`` (reused shared-memory slots, :mod:`vol_transfer.sampling.ring`) vs DataLoader's own
(``torch``), 2 workers, on the CPU recipes' real cases, windows and batch sizes.

Claim checked: the ring makes training faster. The batches come through the product's own path:
``resolve_recipe`` → ``load_cases`` → ``make_batches`` (the recipe with ``sampler.workers=2`` and
``sampler.worker_transport=<ring|torch>``), and each step is the engine's (batch to channels_last_3d,
loss with the padding mask, backward, Adam). The two transports alternate, run after run
(ring, torch, torch, ring, …), because the 2-core machine is shared and noisy; the table gives the
median step time over all runs of each and the ratio. Worker start-up (time to the first batch) is
reported per start method (fork, forkserver, spawn), and so is the load average.

    python benchmarks/bench_train_step.py [--runs 4] [--steps 12] [--recipes brats,hippocampus]

Only the training split is loaded (``hippocampus``: its first 16 cases). The BRATS recipe's
``transfer.source`` (a trained CPU hippocampus run) is replaced by no transfer and no freezing:
the full backward pass, the heaviest step.
"""

from __future__ import annotations

import vol_transfer  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch starts its threads)

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.manifest import read_manifest
from vol_transfer.nets import build_network
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.recipes import config_to_dict, resolve_recipe
from vol_transfer.training.losses import build_loss
from vol_transfer.training.segmentation import make_optimizer_factory, network_config
from vol_transfer.training.segmentation_data import load_cases, make_batches

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "brats": (ROOT / "recipes/brats_tc_finetune_cpu.yaml",
              ["transfer.source=null", "transfer.channel_adaptation=null", "transfer.freezing={kind: none}"]),
    "hippocampus": (ROOT / "recipes/hippocampus_pretrain_cpu.yaml", ["data.train_subjects=16"]),
}
TRANSPORTS = ("ring", "torch")


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


class Setup:
    """One recipe's cases, model, loss and optimizer (shared by every run, so runs differ only in transport)."""

    def __init__(self, name: str, data_root: Path | None) -> None:
        path, overrides = RECIPES[name]
        self.name, self.path, self.overrides = name, path, overrides + ["sampler.workers=2"]
        _, config = resolve_recipe(path, self.overrides)
        root = resolve_data_root(data_root or config.data.data_root)
        manifest = read_manifest(ROOT / config.data.manifest, data_root=root)  # recipes name it from the repo root
        preprocessor = Preprocessor.from_spec(config_to_dict(config.preprocessing))
        self.cases = load_cases(config, config.data.train_split, config.data.train_subjects, manifest, preprocessor)
        self.config = config
        num_classes = len(config.class_names())
        self.model = build_network(network_config(config, self.cases[0].image.shape[0], num_classes))
        self.channels_last = config.training.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.loss_fn = build_loss(config.loss.kind, num_classes, config.loss.class_weights,
                                  config.loss.include_background)
        self.optimizer = make_optimizer_factory(config)(self.model, None)
        training = config.training
        self.shape = f"{training.batch_size}×{self.cases[0].image.shape[0]}×{'×'.join(map(str, training.window))}"

    def batches(self, transport: str, start_method: str | None = None) -> Any:
        _, config = resolve_recipe(self.path, self.overrides + [f"sampler.worker_transport={transport}"])
        batches = make_batches(self.cases, config)
        if start_method is not None:
            batches.loader.multiprocessing_context = start_method
        return batches

    def step(self, batches: Iterator[dict[str, Any]]) -> tuple[float, float]:
        """One engine-like training step: (seconds in all, seconds waiting for the batch)."""
        start = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - start
        image = batch["image"]
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(image.float()), batch["label"].long(), batch["valid"])
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start, waited


def close(batches: Any) -> None:
    """Stop the loader's workers now (the generator's ``finally`` releases the ring)."""
    if batches._iterator is not None:
        batches._iterator.close()


def run(setup: Setup, transport: str, steps: int, warmup: int) -> dict[str, Any]:
    batches = setup.batches(transport)
    started = time.perf_counter()
    setup.step(batches)  # includes worker start-up
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        setup.step(batches)
    timed = [setup.step(batches) for _ in range(steps)]
    close(batches)
    return {"first_s": first, "step_s": [t for t, _ in timed], "wait_s": [w for _, w in timed]}


def startup(setup: Setup, method: str) -> float:
    """Seconds from creating the loader to the first batch, workers started with ``method``."""
    batches = setup.batches("torch", method)
    started = time.perf_counter()
    next(batches)
    elapsed = time.perf_counter() - started
    close(batches)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per transport, alternating (default 4)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run, the first included")
    parser.add_argument("--recipes", default="brats,hippocampus", help=f"comma list of {','.join(RECIPES)}")
    parser.add_argument("--start-methods", default="fork,spawn,forkserver",
                        help="worker start methods to time to the first batch ('' for none); spawn after "
                             "forkserver in one process made a spawned worker abort at shutdown here")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    print(f"load average at start {load_average()} (1/5/15 min), cpu count {os.cpu_count()}", flush=True)
    for name in args.recipes.split(","):
        began = time.perf_counter()
        setup = Setup(name, args.data_root)
        torch.set_num_threads(setup.config.training.threads or torch.get_num_threads())
        print(f"\n{name}: {setup.path.name}, {len(setup.cases)} cases loaded in {time.perf_counter() - began:.0f} s, "
              f"batch {setup.shape}, width {setup.config.network.options.width}, 2 workers, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        results: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
        for r in range(args.runs):
            order = TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]
            for transport in order:
                result = run(setup, transport, args.steps, args.warmup)
                results[transport].append(result)
                print(f"  run {r + 1} {transport:>5}: median step {statistics.median(result['step_s']):.3f} s, "
                      f"median wait {1000 * statistics.median(result['wait_s']):.1f} ms, first batch+step "
                      f"{result['first_s']:.2f} s, load {load_average()}", flush=True)
        print(f"\n  {'transport':<10}{'median step s':>14}{'median wait ms':>16}{'run medians s':>32}")
        medians = {}
        for transport in TRANSPORTS:
            steps = [t for result in results[transport] for t in result["step_s"]]
            waits = [w for result in results[transport] for w in result["wait_s"]]
            medians[transport] = statistics.median(steps)
            per_run = " ".join(f"{statistics.median(result['step_s']):.3f}" for result in results[transport])
            print(f"  {transport:<10}{medians[transport]:>14.3f}{1000 * statistics.median(waits):>16.1f}{per_run:>32}")
        print(f"  ring / torch median step = {medians['ring'] / medians['torch']:.3f} "
              f"(below 1: the ring is faster); load average now {load_average()}", flush=True)
        methods = [m for m in args.start_methods.split(",") if m]
        if methods:
            times = {m: startup(setup, m) for m in methods}
            print("  worker start-up, loader created → first batch (torch transport): "
                  + ", ".join(f"{m} {s:.2f} s" for m, s in times.items()), flush=True)
    print(f"\nload average at end {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
