"""Class-weighted patch sampling + augmentation: vol_transfer vs TorchIO and MONAI, side by side.

Same real data, same run: the 4 BRATS 2015 cases (FLAIR + T1c, tumour core = labels {1,3,4}) held
in memory (disk reading is the same nibabel call for everyone and is left out), windows of 96³
and 48³, with and without rotation ±10° / scaling ±10 %, 0 and 2 worker processes. Class
probabilities 50 % background / 50 % tumour core for every method. Each method gets its usual
pipeline:

* vol_transfer: ``PatchLoader`` + ``BalancedSampler`` (+ ``Augmentation.study()``: one resample of
  only the window, per patch); per-volume sampler indices kept in memory, as training does.
* TorchIO: ``SubjectsDataset`` (+ ``RandomAffine`` on the whole subject) → ``LabelSampler`` →
  ``Queue`` (all 4 subjects in the queue) → DataLoader.
* MONAI: ``RandCropByLabelClassesd(num_samples=N)`` (+ ``RandAffined`` on each patch), with label
  indices computed per call, or cached beforehand with ``ClassesToIndicesd`` (not timed).

Every method draws N patches per volume visit; the consuming loop reads every voxel of each batch
(as a training step would). Each is timed from creating its iterator until it
has given at least one pass over the volumes and run for a minimum time (worker start-up
included; it fades with run length, as in training). Also printed: the class frequency of our window centres
over 10,000 draws per case (target 0.50 ± 0.02), a hippocampus-crop run (crops smaller than 48³:
padded), and one HighRes3DNet training step on a batch of the same windows (CPU here).

Run:  python benchmarks/bench_sampler.py --quick     (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import nibabel as nib
import numpy as np
import torch

from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.preprocessing.labels import remap_labels
from vol_transfer.sampling import Augmentation, BalancedSampler, PatchLoader

BRATS_CHANNELS = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
PROBABILITIES = {0: 0.5, 1: 0.5}
DATA: list[tuple[np.ndarray, np.ndarray]] = []  # module level so forked workers share it


def load_brats(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    cases = sorted(p.parent for p in (root / "brats2015_flair_t1c").glob("*/*/OTMultiClass.nii.gz"))
    volumes = []
    for case in cases:
        image = np.ascontiguousarray(np.stack([np.asarray(nib.load(case / name).dataobj, dtype=np.float32)
                                               for name in BRATS_CHANNELS]))
        label = remap_labels(np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj), "brats_tc_2015")
        volumes.append((image, np.ascontiguousarray(label, dtype=np.uint8)))  # C order for every method
    return volumes


def load_hippocampus(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = root / "msd_hippocampus"
    volumes = []
    for path in sorted((folder / "imagesTr").glob("*.nii.gz"))[:count]:
        image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        label = (np.asarray(nib.load(folder / "labelsTr" / path.name).dataobj) > 0).astype(np.uint8)
        volumes.append((np.ascontiguousarray(image[None]), np.ascontiguousarray(label)))
    return volumes


def from_memory(index: int):
    return DATA[index]


# --- the methods: each returns patches/s over at least `min_patches` patches and `min_seconds` -----
def measure(batches: Iterator, size: Callable[[Any], int], min_patches: int, min_seconds: float) -> float:
    """Patches per second from creating the iterator (worker start-up included) to the last patch."""
    start = time.perf_counter()
    count = 0
    for batch in batches:
        count += size(batch)
        elapsed = time.perf_counter() - start
        if count >= min_patches and elapsed >= min_seconds:
            return count / elapsed
    raise RuntimeError("the batch stream ended early")


def touched(image: torch.Tensor, label: torch.Tensor) -> int:
    """Read every voxel of a batch, as a training step would (shared-memory pages fault in here)."""
    float(image.numpy().sum()) + int(label.numpy().max())
    return int(image.shape[0])


def endless(loader) -> Iterator:
    while True:
        yield from loader


def run_ours(window: int, augment: bool, workers: int, per_volume: int, min_patches: int,
             min_seconds: float) -> float:
    loader = PatchLoader(list(range(len(DATA))), from_memory, BalancedSampler(window, PROBABILITIES),
                         batch_size=2, patches_per_volume=per_volume, volumes_per_block=len(DATA),
                         augmentation=Augmentation.study() if augment else None, seed=0, num_workers=workers)
    return measure(iter(loader), lambda b: touched(b["image"], b["label"]), min_patches, min_seconds)


def run_torchio(window: int, augment: bool, workers: int, per_volume: int, min_patches: int,
                min_seconds: float) -> float:
    import torchio as tio

    subjects = [tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)),
                            label=tio.LabelMap(tensor=torch.from_numpy(label[None].astype(np.int16))))
                for image, label in DATA]
    transform = tio.RandomAffine(scales=0.1, degrees=10) if augment else None
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    sampler = tio.LabelSampler(window, label_name="label", label_probabilities=PROBABILITIES)
    queue = tio.Queue(dataset, max_length=len(DATA) * per_volume, samples_per_volume=per_volume, sampler=sampler,
                      num_workers=workers)
    loader = torch.utils.data.DataLoader(queue, batch_size=2, num_workers=0)
    return measure(endless(loader), lambda b: touched(b["image"][tio.DATA], b["label"][tio.DATA]), min_patches,
                   min_seconds)


def run_monai(window: int, augment: bool, workers: int, per_volume: int, min_patches: int, min_seconds: float,
              cached: bool = False) -> float:
    from monai.data import DataLoader, Dataset, list_data_collate
    from monai.transforms import ClassesToIndicesd, Compose, RandAffined, RandCropByLabelClassesd, SpatialPadd

    items = [{"image": torch.from_numpy(image), "label": torch.from_numpy(label[None])} for image, label in DATA]
    if cached:  # what CacheDataset would hold: indices computed once, before training
        items = [ClassesToIndicesd(keys="label", num_classes=2)(item) for item in items]
    steps = [SpatialPadd(keys=("image", "label"), spatial_size=window)] if min(DATA[0][1].shape) < window else []
    steps.append(RandCropByLabelClassesd(keys=("image", "label"), label_key="label", spatial_size=window,
                                         ratios=[PROBABILITIES[0], PROBABILITIES[1]], num_classes=2,
                                         num_samples=per_volume, indices_key="label_cls_indices" if cached else None,
                                         warn=False))
    if augment:
        steps.append(RandAffined(keys=("image", "label"), prob=1.0, rotate_range=(math.radians(10),) * 3,
                                 scale_range=(0.1,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"))
    dataset = Dataset(items, transform=Compose(steps))
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers, collate_fn=list_data_collate,
                        persistent_workers=workers > 0)
    return measure(endless(loader), lambda b: touched(b["image"].as_tensor(), b["label"].as_tensor()), min_patches,
                   min_seconds)


METHODS = {
    "vol_transfer": run_ours,
    "torchio_queue": run_torchio,
    "monai": lambda *a: run_monai(*a, cached=False),
    "monai_cached_idx": lambda *a: run_monai(*a, cached=True),
}


def class_frequency(draws: int) -> list[str]:
    lines = []
    for window in (96, 48):
        sampler = BalancedSampler(window, PROBABILITIES)
        for case, (_, label) in enumerate(DATA):
            centres = sampler.draw(sampler.prepare(label), draws, np.random.default_rng(case))
            frequency = float(label[tuple(centres.T)].mean())
            status = "ok" if abs(frequency - 0.5) <= 0.02 else "FAIL"
            lines.append(f"  window {window}, case {case}: tumour-core centres {frequency:.3f} (target 0.500 ± 0.02) {status}")
    return lines


def training_step_seconds(window: int, batch: int = 2) -> float:
    from vol_transfer.nets.highres3dnet import HighRes3DNet

    net = HighRes3DNet(in_channels=2, num_classes=2)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    image = torch.randn(batch, 2, window, window, window)
    label = torch.randint(0, 2, (batch, window, window, window))
    times = []
    for _ in range(2):  # the first step warms up allocators
        start = time.perf_counter()
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(image), label)
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return times[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--quick", action="store_true", help="fewer patches per run (a few minutes in all)")
    parser.add_argument("--windows", type=int, nargs="+", default=[96, 48])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--step-window", type=int, default=None,
                        help="window of the timed training step (default 48, 32 with --quick; 96 takes many minutes on CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here (atomically)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    root = resolve_data_root(args.data_root)
    per_volume = 4 if args.quick else 8
    min_seconds = 6.0 if args.quick else 20.0

    DATA[:] = load_brats(root)
    min_patches = per_volume * len(DATA)  # at least one pass over every volume
    print(f"data: {len(DATA)} BRATS cases {DATA[0][0].shape}, tumour core "
          f"{np.mean([l.mean() for _, l in DATA]) * 100:.2f} % of voxels; {per_volume} patches per volume visit; "
          f"each run >= {min_patches} patches and >= {min_seconds:.0f} s; torch threads {args.threads}; "
          f"cpu count {os.cpu_count()}")
    results = []
    header = f"{'window':>6} {'augment':>7} {'workers':>7} " + " ".join(f"{m:>19}" for m in args.methods)
    print("\npatches/s (higher is better)\n" + header)
    for window in args.windows:
        for augment in (False, True):
            for workers in args.workers:
                rates = {}
                for method in args.methods:
                    rates[method] = METHODS[method](window, augment, workers, per_volume, min_patches, min_seconds)
                results.append({"window": window, "augment": augment, "workers": workers, "patches_per_s": rates})
                print(f"{window:>6} {str(augment):>7} {workers:>7} " + " ".join(f"{rates[m]:19.1f}" for m in args.methods),
                      flush=True)

    if "vol_transfer" in args.methods:
        print("\nratios: vol_transfer / peer (goal: >= 10x TorchIO, >= 3x MONAI with augmentation; "
              "like with like: monai_cached_idx also keeps per-volume indices in memory)")
        for row in results:
            rates = row["patches_per_s"]
            ours = rates["vol_transfer"]
            ratios = "  ".join(f"{m} {ours / r:6.1f}x" for m, r in rates.items() if m != "vol_transfer")
            print(f"  {row['window']:>3}³ augment={str(row['augment']):5} workers={row['workers']}: {ratios}")

    print("\nclass frequency of window centres over 10,000 draws (BalancedSampler, 50/50):")
    frequency_lines = class_frequency(10000)
    print("\n".join(frequency_lines))

    DATA[:] = load_hippocampus(root, 40 if not args.quick else 20)
    print(f"\nhippocampus crops ({len(DATA)} volumes, all smaller than 48³ along an axis: padded), 48³, workers 0, "
          f"2 patches per visit:")
    hippocampus = {}
    for augment in (False, True):
        rates = {m: METHODS[m](48, augment, 0, 2, 2 * len(DATA), min_seconds / 2)
                 for m in args.methods if m != "torchio_queue"}  # TorchIO's LabelSampler refuses images smaller than the patch
        hippocampus[str(augment)] = rates
        print(f"  augment={str(augment):5} " + "  ".join(f"{m} {r:8.1f}/s" for m, r in rates.items()))

    DATA[:] = load_brats(root)
    step_window = args.step_window or (32 if args.quick else 48)
    step = training_step_seconds(step_window)
    sampler_batch = 2 / run_ours(step_window, True, 0, per_volume, 4 * per_volume, 2.0)  # a batch of 2, augmented
    print(f"\nHighRes3DNet training step (forward + backward + Adam), batch 2×2×{step_window}³, CPU, {args.threads} "
          f"threads: {step:.2f} s; our sampler for a batch of the same windows with augmentation, in-process, "
          f"workers 0: {sampler_batch:.3f} s = {100 * sampler_batch / step:.2f} % of the step (goal < 5 %)")

    if args.json:
        atomic_write_text(args.json, json.dumps({"bench": results, "class_frequency": frequency_lines,
                                                 "hippocampus": hippocampus, "train_step_s": step,
                                                 "sampler_batch_s": sampler_batch}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
