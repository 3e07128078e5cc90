"""Patch augmentation: our resample vs TorchIO's equivalent, and the cost of each TorchIO transform in our loader.

Same real data, same patches, same model-free loop, one process with one torch and one SimpleITK
thread (what one loader worker has): BraTS 2018 cases (4 sequences, z-score over the brain,
tumour core {1, 4}), window centres drawn once by ``BalancedSampler`` (50 % tumour core), every
method augments exactly those windows and the loop sums each result (so every voxel is read).

(a) ours: ``extract_patch`` with rotation ±10° about each axis, isotropic scaling ±10 %, flips
    on all three axes (one resample of only the window, label by nearest neighbour).
(b) TorchIO's equivalent: ``RandomAffine(degrees=10, scales=0.1, isotropic=True)`` +
    ``RandomFlip(axes=(0, 1, 2))`` on image + label map, float32, at its best placements:
    per patch on the plain window (fastest, but the rotated corners are padding), per patch on a
    window with a 25 % context margin each side (real voxels at the border, as ours; cropped
    after), and per subject (the whole volume once per visit, its patches cropped after; the
    cost is spread over ``--patches-per-visit`` patches, as TorchIO's ``Queue`` does).
(c) our loader's path with the new ``sampler.augmentation.torchio`` transforms: (a) followed by
    each transform alone at p = 1, and a recipe-like mix with p = 0.1 … 0.3. The elastic
    deformation is timed both as the loader runs it (``FastElastic``: TorchIO's parameters and
    B-spline field, one ``grid_sample``) and with TorchIO's own SimpleITK resample.

Run:  nice -n 5 python benchmarks/bench_torchio_augmentation.py      (~3 min on a shared 2-core machine)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio

from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.recipes import from_dict
from vol_transfer.sampling import Augmentation, BalancedSampler, extract_patch
from vol_transfer.sampling.padding import crop_window, window_start
from vol_transfer.sampling.torchio_augment import TorchioPipeline, TorchioTransform

SEQUENCES = ("t1", "t1ce", "t2", "flair")
OURS = Augmentation(rotation_degrees=10, scaling=0.1, flip_axes=(0, 1, 2))
SINGLE = [{"name": "RandomElasticDeformation", "max_displacement": 5}, {"name": "RandomMotion"},
          {"name": "RandomGhosting"}, {"name": "RandomSpike"}, {"name": "RandomAnisotropy"}, {"name": "RandomBlur"},
          {"name": "RandomBiasField"}, {"name": "RandomGamma"}, {"name": "RandomNoise"}]
MIX = [{"name": "RandomElasticDeformation", "p": 0.3, "max_displacement": 5}, {"name": "RandomMotion", "p": 0.2},
       {"name": "RandomGhosting", "p": 0.2}, {"name": "RandomSpike", "p": 0.1}, {"name": "RandomAnisotropy", "p": 0.2},
       {"name": "RandomBlur", "p": 0.2}, {"name": "RandomBiasField", "p": 0.3}, {"name": "RandomNoise", "p": 0.3}]


def load_cases(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folders = sorted(p for p in (root / "brats2018_4mod").iterdir() if p.is_dir())[:count]
    cases = []
    for folder in folders:
        channels = []
        for sequence in SEQUENCES:
            data = np.asarray(nib.load(folder / f"{folder.name}_{sequence}.nii.gz").dataobj, dtype=np.float32)
            brain = data[data != 0]
            channels.append(np.where(data != 0, (data - brain.mean()) / brain.std(), 0).astype(np.float32))
        seg = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
        cases.append((np.ascontiguousarray(np.stack(channels)), np.isin(seg, (1, 4)).astype(np.int16)))
    return cases


def specs(entries: list[dict]) -> tuple:
    return tuple(from_dict(list[TorchioTransform], entries, "torchio"))


def subject(image: np.ndarray, label: np.ndarray) -> tio.Subject:
    return tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)),
                       label=tio.LabelMap(tensor=torch.from_numpy(label)[None]))


def timed(name: str, run: Callable[[int], float], count: int, results: dict) -> None:
    run(0)  # warm-up: imports, kernels, first allocation
    started = time.perf_counter()
    checksum = sum(run(i) for i in range(count))
    seconds = time.perf_counter() - started
    results[name] = {"patches_per_s": count / seconds, "seconds": seconds, "patches": count}
    ratio = results[name]["patches_per_s"] / results["(a) ours"]["patches_per_s"] if "(a) ours" in results else 1.0
    print(f"{name:58s} {count / seconds:8.2f} patches/s  {ratio:7.3f}× ours   (checksum {checksum:.4g})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--patches-per-visit", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    cases = load_cases(resolve_data_root(args.data_root), args.cases)
    sampler = BalancedSampler(args.window, {0: 0.5, 1: 0.5})
    rng = np.random.default_rng(0)
    patches = [(c, centre) for c, (_, label) in enumerate(cases)
               for centre in sampler.draw(sampler.prepare(label), args.patches_per_visit, rng)]
    count = len(patches)
    window = (args.window,) * 3
    params = [OURS.draw(np.random.default_rng([0, i])) for i in range(count)]
    print(f"{len(cases)} BraTS 2018 cases {cases[0][0].shape}, {count} windows of {args.window}³, "
          f"1 torch + 1 SimpleITK thread, torchio {tio.__version__}, load {os.getloadavg()[0]:.2f}", flush=True)

    def ours(i: int) -> float:
        c, centre = patches[i]
        return float(extract_patch(*cases[c], centre, window, params[i]).image.sum())

    tio_affine = tio.Compose([tio.RandomAffine(scales=0.1, degrees=10, isotropic=True, default_pad_value=0),
                              tio.RandomFlip(axes=(0, 1, 2))], copy=False)

    def tio_patch(margin: int) -> Callable[[int], float]:
        def run(i: int) -> float:
            c, centre = patches[i]
            image, label = cases[c]
            size = tuple(w + 2 * margin for w in window)
            start = window_start(centre, size)
            out = tio_affine(subject(crop_window(image, start, size, 0.0, np.float32),
                                     crop_window(label, start, size, 0, np.int16)))
            inner = tuple(slice(margin, margin + w) for w in window)
            return float(out["image"].data[(slice(None),) + inner].sum() + out["label"].data[(0,) + inner].sum())
        return run

    visit: dict[int, tio.Subject] = {}

    def tio_subject(i: int) -> float:
        c, centre = patches[i]
        if i % args.patches_per_visit == 0 or c not in visit:  # a new visit: the whole volume, once
            visit.clear()
            visit[c] = tio_affine(subject(*cases[c]))
        out = visit[c]
        start = window_start(centre, window)
        image = crop_window(out["image"].data.numpy(), start, window, 0.0, np.float32)
        return float(image.sum())

    def with_pipeline(pipeline: TorchioPipeline) -> Callable[[int], float]:
        def run(i: int) -> float:
            c, centre = patches[i]
            return float(extract_patch(*cases[c], centre, window, params[i], torchio=pipeline,
                                       torchio_seed=i).image.sum())
        return run

    results: dict = {}
    timed("(a) ours", ours, count, results)
    timed("(b) TorchIO per patch, plain window", tio_patch(0), count, results)
    timed("(b) TorchIO per patch, 25 % context margin", tio_patch(args.window // 4), count, results)
    timed(f"(b) TorchIO per subject ({args.patches_per_visit} patches per visit)", tio_subject, count, results)
    for entry in SINGLE:
        pipeline = TorchioPipeline(specs([entry]))
        timed(f"(c) ours + {entry['name']}", with_pipeline(pipeline), count, results)
        if entry["name"] == "RandomElasticDeformation":
            own = TorchioPipeline(specs([entry]))
            own._steps = [own.specs[0].build()]  # TorchIO's own SimpleITK resample, for comparison
            timed("(c) ours + RandomElasticDeformation, TorchIO's resample", with_pipeline(own), count, results)
    timed("(c) ours + recipe-like mix (p 0.1-0.3)", with_pipeline(TorchioPipeline(specs(MIX))), count, results)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps({"window": args.window, "cases": args.cases, "patches": count,
                                                "torchio": tio.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
