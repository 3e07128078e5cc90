"""Training-step time on CPU: scratch vs the study's models 1–5 (first k groups frozen), fp32 and bf16,
and our HighRes3DNet vs MONAI's HighResNet (the peer), on one real BraTS FLAIR+T1c window.

Claim checked: freezing the first 4 groups (model 4) costs ≤ 0.5× the scratch step, because
autograd does no backward at all through a frozen prefix of the network.

    python benchmarks/bench_freezing.py [--size 48] [--steps 3] [--data-root ../shared/data]

Steps are interleaved round-robin over all configurations (robust against a shared, noisy CPU);
the table reports the median step time and its ratio to our scratch step in the same precision.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import HighResNet

from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.volumes import load_volume
from vol_transfer.nets import build_network
from vol_transfer.transfer.freezing import freeze_first
from vol_transfer.transfer.lr_groups import make_optimizer

CASE = "brats2015_flair_t1c/train/brats_2013_pat0005_1"
CONFIG = {"name": "highres3dnet", "in_channels": 2, "num_classes": 2}


def real_window(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A FLAIR+T1c window centred on the tumour core, and its tumour-core labels."""
    case = root / CASE
    images = np.concatenate(
        [load_volume(case / f).array for f in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")]
    ).astype(np.float32)
    labels = load_volume(case / "OTMultiClass.nii.gz").array[0]
    core = np.isin(np.rint(labels), (1, 3, 4))
    centre = np.argwhere(core).mean(axis=0).round().astype(int)
    window = tuple(slice(int(np.clip(c - size // 2, 0, d - size)), None) for c, d in zip(centre, labels.shape))
    window = tuple(slice(w.start, w.start + size) for w in window)
    image = torch.from_numpy(np.ascontiguousarray(images[(slice(None), *window)]))[None]
    return image, torch.from_numpy(core[window].astype(np.int64))[None]


class Runner:
    """One configuration: a model, its optimizer and a training step."""

    def __init__(self, name: str, model: torch.nn.Module, precision: str) -> None:
        self.name, self.model, self.precision = name, model, precision
        self.optimizer = make_optimizer(model, "adam", lr=1e-3, weight_decay=1e-5)
        self.times: list[float] = []

    def step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = self.model(image)
        loss = torch.nn.functional.cross_entropy(logits.float(), label)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="window edge in voxels (default 48)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32,bf16")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, label = real_window(resolve_data_root(args.data_root), args.size)

    runners = []
    for precision in args.precisions.split(","):
        for k in range(6):
            model = build_network(CONFIG).train()
            freeze_first(model, k, bn_policy="update")
            runners.append(Runner("scratch" if k == 0 else f"model {k}", model, precision))
        peer = HighResNet(spatial_dims=3, in_channels=2, out_channels=2).train()
        runners.append(Runner("MONAI HighResNet (peer)", peer, precision))

    # warm-up: oneDNN primitives are cached by shape and shared by every model of a precision,
    # so one full step of each architecture (ours, MONAI's) per precision warms them all
    for runner in runners:
        if runner.name in ("scratch", "MONAI HighResNet (peer)"):
            runner.step(image, label)
    for _ in range(args.steps):
        for runner in runners:
            runner.times.append(runner.step(image, label))

    print(f"training step, batch 1, window {args.size}^3 (real BraTS FLAIR+T1c), CPU threads {args.threads}, "
          f"median of {args.steps} steps, round-robin, after warm-up")
    print(f"{'configuration':<26}{'precision':>10}{'trainable':>11}{'step s':>9}{'× scratch':>11}")
    for precision in args.precisions.split(","):
        group = [r for r in runners if r.precision == precision]
        scratch = statistics.median(group[0].times)
        for runner in group:
            median = statistics.median(runner.times)
            trainable = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
            print(f"{runner.name:<26}{precision:>10}{trainable:>11,}{median:>9.3f}{median / scratch:>11.2f}")
    for precision in args.precisions.split(","):
        group = {r.name: statistics.median(r.times) for r in runners if r.precision == precision}
        print(f"{precision}: model 4 / scratch = {group['model 4'] / group['scratch']:.2f} (goal ≤ 0.50); "
              f"ours / MONAI scratch step = {group['scratch'] / group['MONAI HighResNet (peer)']:.2f}")
    if "fp32" in args.precisions and "bf16" in args.precisions:
        fp32 = statistics.median(runners[0].times)
        bf16 = statistics.median(next(r for r in runners if r.precision == "bf16").times)
        print(f"scratch bf16 / fp32 = {bf16 / fp32:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
