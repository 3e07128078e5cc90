"""Whole-volume inference, ours vs MONAI, compared fairly: same model, same windows, best batch.

Every MONAI variant gets what ours runs: the trained network as our inference copy (BatchNorm
folded into the convolutions, ``channels_last_3d`` weights and inputs:
:func:`vol_transfer.inference.predict.inference_copy`), the same window, overlap and blend mode as
our ``mode=window``, and a sweep of ``sw_batch_size`` (the best one is the peer). So the ratios
compare windowing, not models. ``monai_default`` is what a MONAI user runs out of the box (the
checkpoint's network as trained: BatchNorm unfused, default memory layout, ``sw_batch_size=1``):
the old, unfair peer, kept to show what changed.

Inputs (all real, each with a trained network and its stored preprocessing):

* ``crop``  — one BraTS 2018 case (T1+T2), preprocessed as ``vol-transfer infer`` does it, including
  the checkpoint's ``crop_foreground`` (the head's box + margin): what ``infer`` runs on;
* ``full``  — the same case without the crop (the full 240×240×155 grid);
* ``hippocampus`` — the first N validation cases of MSD hippocampus with the CPU pre-trained model
  (each case is smaller than the window, so one window covers it: ours clips the window to the
  volume and MONAI gets that clipped ``roi_size`` too, instead of zero-padding every case to 96³;
  a warm-up pass on the first case is not timed; the time is the best total of
  ``--hippocampus-repeats`` passes over the cases);
* ``overhead`` — windowing alone, ours vs MONAI: a pointwise (1×1×1 convolution) network on the
  ``full`` grid, so the network costs next to nothing and what is left is cutting the windows,
  batching, weighting and blending (interleaved repeats, best of ``--overhead-repeats`` each).

Variants (``@B``: windows per forward pass):

* ``exact``      — ours, ``mode=whole``: one exact pass (what ``vol-transfer infer`` picks when it fits);
* ``window@B``   — ours, ``mode=window`` (overlapping windows, blended), ``batch_size=B``;
* ``monai@B``    — MONAI ``SlidingWindowInferer`` on our inference copy, ``sw_batch_size=B``;
* ``monai_default@1`` — MONAI on the network as trained (unfused, default layout), ``sw_batch_size=1``.

``window@B`` and ``monai@B`` run back to back (MONAI first; ``--ours-first`` swaps them: run both
orders when the shared machine's load drifts). Every variant runs in its own process (its peak memory is its own) and its time covers the
model copy and the prediction. ``peak GFLOP/s`` is a 2048² matmul measured in that process right
before it ran: it shows how much of the CPU the variant had. Agreement is measured against our
exact pass: ``max|Δlogit|`` and Dice (mean over the foreground classes) of the argmax label maps;
``Dice vs truth`` uses the case's own labels, mapped as the checkpoint was trained.

    python benchmarks/bench_inference.py                          # every scope, sweep 1,2,4,8
    python benchmarks/bench_inference.py --scopes crop --sw-batch-sizes 1,4   # quicker
    python benchmarks/bench_inference.py --full-sw-batch-sizes 4  # the full volume at one batch size
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCOPES = ("crop", "full", "hippocampus", "overhead")
BRATS_CHECKPOINT = "runs/brats18_freeze_ablation_cpu/arms/finetune_seed0_fold0/checkpoints/best.pt"
HIPPOCAMPUS_CHECKPOINT = "runs/hippocampus_pretrain_cpu/checkpoints/best.pt"
BRATS_MANIFEST = "data_manifests/brats2018_4mod.csv"
HIPPOCAMPUS_MANIFEST = "data_manifests/msd_hippocampus.csv"
BRATS_CASE = "Brats18_2013_11_1"  # fold 0: held out from the fold-0 arm's training


def load_inputs(scope: str, args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Prepared images ``(C, X, Y, Z)`` float32, truth label maps on the same grids, and the checkpoint."""
    from vol_transfer.io.case import load_case
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.preprocessing.labels import remap_labels
    from vol_transfer.preprocessing.pipeline import Preprocessor
    from vol_transfer.transfer.checkpoint import load_checkpoint

    brats = scope in ("crop", "full")
    checkpoint_path = args.brats_checkpoint if brats else args.hippocampus_checkpoint
    metadata = load_checkpoint(checkpoint_path).metadata or {}
    spec = dict(metadata.get("preprocessing") or {})
    if scope == "full":
        spec["crop_foreground"] = None
    preprocessor = Preprocessor.from_spec(spec)
    manifest = read_manifest(ROOT / (BRATS_MANIFEST if brats else HIPPOCAMPUS_MANIFEST), args.data_root)
    if brats:
        subjects = [s for s in manifest.subjects() if s.subject_id == args.brats_case]
        if not subjects:
            raise SystemExit(f"{BRATS_MANIFEST}: no case {args.brats_case!r}; pick one of its subject_id values")
    else:
        subjects = manifest.subjects("validation")[: args.hippocampus_cases]
    images, truths = [], []
    for subject in subjects:
        image, label = load_case(subject, metadata.get("channels"))
        label = replace(label, array=remap_labels(label.array, metadata.get("label_mapping")))
        prepared, prepared_label, _ = preprocessor.apply_with_label(image, label)
        images.append(np.ascontiguousarray(prepared.array, dtype=np.float32))
        truths.append(np.asarray(prepared_label.array).reshape(prepared.spatial_shape).astype(np.uint8))
    return images, truths, checkpoint_path


def per_voxel_flops(net: torch.nn.Module) -> int:
    total = 0
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            total += 2 * math.prod(module.kernel_size) * module.in_channels // module.groups * module.out_channels
    return total


def peak_matmul_flops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(variant: str, batch: int, net: torch.nn.Module, image: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Logits ``(K, X, Y, Z)`` of one variant on one image."""
    from vol_transfer.inference.predict import (
        InferenceOptions,
        inference_copy,
        predict_logits,
    )

    device = torch.device(args.device)
    if variant in ("exact", "window"):
        mode = "whole" if variant == "exact" else "window"
        return predict_logits(net, image, mode=mode, window=args.window, overlap=args.overlap, blend=args.blend,
                              batch_size=batch, device=device)
    from monai.inferers import SlidingWindowInferer

    roi = tuple(min(args.window, s) for s in image.shape[1:])  # the windows ours runs (clipped to the volume)
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=batch, overlap=args.overlap, mode=args.blend,
                                   sw_device=device, device="cpu")
    if variant == "monai_default":
        runner = net
    else:  # exactly the copy predict_logits runs: BN folded, channels_last_3d weights
        copy = inference_copy(net, InferenceOptions(), device)

        def runner(batch_input: torch.Tensor) -> torch.Tensor:
            return copy(batch_input.contiguous(memory_format=torch.channels_last_3d))
    with torch.no_grad():
        return torch.as_tensor(inferer(image[None].to(device), runner)[0]).float().cpu()


def worker(args: argparse.Namespace) -> None:
    from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

    torch.set_num_threads(args.threads)
    images = [torch.from_numpy(a) for a in np.load(args.images).values()]
    net = build_from_checkpoint(load_checkpoint(args.checkpoint)).eval().to(args.device)
    variant, _, batch_text = args.worker.partition("@")
    batch = int(batch_text or 1)
    if args.warmup:  # small cases: the first call's one-time costs would dominate
        run_one(variant, batch, net, images[0], args)
    peak = peak_matmul_flops()
    baseline = maxrss_bytes()
    seconds = math.inf
    for _ in range(args.repeats):  # the best total of the repeats: the shared machine's bursts inflate single runs
        outputs, total = [], 0.0
        for image in images:
            start = time.perf_counter()
            outputs.append(run_one(variant, batch, net, image, args))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            total += time.perf_counter() - start
        seconds = min(seconds, total)
    np.savez(args.logits, *[o.numpy() for o in outputs])
    print(json.dumps({"seconds": seconds, "peak": maxrss_bytes(), "baseline": baseline, "peak_flops": peak}))


def run_variant(variant: str, scope: str, args: argparse.Namespace, files: dict[str, Path], folder: Path) -> dict:
    logits = folder / f"{scope}_{variant.replace('@', '_')}.npz"
    command = [sys.executable, __file__, "--worker", variant, "--images", str(files[scope]),
               "--checkpoint", str(files[f"{scope}_checkpoint"]), "--logits", str(logits),
               "--threads", str(args.threads), "--device", args.device, "--window", str(args.window),
               "--overlap", str(args.overlap), "--blend", args.blend]
    if scope == "hippocampus":
        command += ["--warmup", "--repeats", str(args.hippocampus_repeats)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{scope} {variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(logits) as saved:
        result["logits"] = [saved[k] for k in saved.files]
    return result


def variants_for(scope: str, args: argparse.Namespace) -> list[str]:
    """``exact``, the MONAI sweep with ours right after MONAI at the same batch size, ``monai_default@1``."""
    if scope == "hippocampus":  # one window per case: the batch size changes nothing
        return ["exact", "window@1", "monai@1"] + (["monai_default@1"] if scope in args.default_scopes else [])
    sweep = args.full_sw_batch_sizes if scope == "full" and args.full_sw_batch_sizes else args.sw_batch_sizes
    ours = args.window_batch_sizes or sweep
    pairs = [[f"monai@{b}"] + ([f"window@{b}"] if b in ours else []) for b in sweep]
    paired = [v for pair in pairs for v in (pair[::-1] if args.ours_first else pair)]
    return ["exact", *paired] + (["monai_default@1"] if scope in args.default_scopes else [])


def windowing_overhead(args: argparse.Namespace, image: np.ndarray, repeats: int) -> None:
    """Ours vs MONAI windowing alone: a pointwise (1×1×1 convolution) network on the real grid, so the
    network costs next to nothing and what is left is cutting, batching, weighting and blending.
    Interleaved repeats, best of ``repeats`` each."""
    from monai.inferers import SlidingWindowInferer

    from vol_transfer.inference.predict import (
        InferenceOptions,
        inference_copy,
        predict_logits,
    )

    torch.manual_seed(0)
    net = torch.nn.Conv3d(image.shape[0], 2, 1).eval()
    tensor = torch.from_numpy(image)
    roi = tuple(min(args.window, s) for s in tensor.shape[1:])
    best: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for batch in args.sw_batch_sizes:
            start = time.perf_counter()
            outputs[f"window@{batch}"] = predict_logits(net, tensor, mode="window", window=args.window,
                                                        overlap=args.overlap, blend=args.blend, batch_size=batch)
            best[f"window@{batch}"] = min(best.get(f"window@{batch}", math.inf), time.perf_counter() - start)
            start = time.perf_counter()
            copy = inference_copy(net, InferenceOptions(), torch.device("cpu"))
            inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=batch, overlap=args.overlap, mode=args.blend)
            with torch.no_grad():
                outputs[f"monai@{batch}"] = inferer(tensor[None], lambda x, run=copy: run(
                    x.contiguous(memory_format=torch.channels_last_3d)))[0]
            best[f"monai@{batch}"] = min(best.get(f"monai@{batch}", math.inf), time.perf_counter() - start)
    print(f"\n### windowing overhead: pointwise network on {tuple(tensor.shape)}, best of {repeats} interleaved runs")
    print("| batch | ours s | MONAI s | ours / MONAI | max|Δ| |")
    print("|---|---|---|---|---|")
    for batch in args.sw_batch_sizes:
        ours, theirs = best[f"window@{batch}"], best[f"monai@{batch}"]
        delta = float((outputs[f"window@{batch}"] - outputs[f"monai@{batch}"]).abs().max())
        print(f"| {batch} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.3f} | {delta:.1e} |")


def mean_foreground_dice(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    from vol_transfer.evaluation.metrics import dice_per_class, mean_dice

    return mean_dice(dice_per_class(a, b, classes))


def report(scope: str, results: dict[str, dict], truths: list[np.ndarray], flops: int) -> None:
    exact = results["exact"]["logits"]
    classes = exact[0].shape[0]
    fair = {v: r["seconds"] for v, r in results.items() if v.startswith("monai@")}
    best_monai = min(fair, key=fair.get)
    default = results.get("monai_default@1", {}).get("seconds", math.nan)
    voxels = sum(math.prod(t.shape) for t in truths)
    shapes = sorted({tuple(t.shape) for t in truths})
    print(f"\n### {scope}: {len(truths)} case(s), {voxels:,} voxels, grid(s) "
          f"{shapes[0] if len(shapes) == 1 else f'{shapes[0]} … {shapes[-1]}'}; best fair MONAI: {best_monai}")
    header = ("variant", "time s", "× best MONAI", "× MONAI default", "peak GiB", "Δmem GiB", "max|Δlogit| vs exact",
              "Dice vs exact", "Dice vs truth", "peak GFLOP/s", "× FLOP bound")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant, r in results.items():
        delta = max(float(np.abs(o - e).max()) for o, e in zip(r["logits"], exact))
        labels = [o.argmax(0) for o in r["logits"]]
        exact_labels = [e.argmax(0) for e in exact]
        vs_exact = np.nanmean([mean_foreground_dice(p, e, classes) for p, e in zip(labels, exact_labels)])
        vs_truth = np.nanmean([mean_foreground_dice(p, t, classes) for p, t in zip(labels, truths)])
        bound = voxels * flops / r["peak_flops"]  # one pass over every voxel; windows compute more
        print(f"| {variant} | {r['seconds']:.2f} | {r['seconds'] / fair[best_monai]:.3f} | {r['seconds'] / default:.3f} | "
              f"{r['peak'] / 2**30:.2f} | {(r['peak'] - r['baseline']) / 2**30:.2f} | {delta:.2e} | {vs_exact:.4f} | "
              f"{vs_truth:.4f} | {r['peak_flops'] / 1e9:.0f} | {r['seconds'] / bound:.2f} |")
    print(f"fair ratio, ours exact / best MONAI ({best_monai}): {results['exact']['seconds'] / fair[best_monai]:.3f}×; "
          f"old unfair ratio, ours exact / MONAI default: {results['exact']['seconds'] / default:.3f}×")
    ours = {v: r["seconds"] for v, r in results.items() if v.startswith("window@")}
    if not ours:
        return
    best_ours = min(ours, key=ours.get)
    print(f"window mode, ours best ({best_ours}) / MONAI best ({best_monai}): {ours[best_ours] / fair[best_monai]:.3f}×")
    for variant, seconds in ours.items():
        peer = "monai@" + variant.partition("@")[2]
        if peer in results:
            same = max(float(np.abs(a - b).max()) for a, b in zip(results[variant]["logits"], results[peer]["logits"]))
            print(f"  {variant} / {peer}: {seconds / fair[peer]:.3f}× (max|Δlogit| {same:.1e})")


def sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive batch sizes, e.g. 1,2,4,8")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scopes", default=",".join(SCOPES), help=f"comma list of {SCOPES}")
    parser.add_argument("--sw-batch-sizes", type=sizes, default=[1, 2, 4, 8], help="windows per pass to sweep (1,2,4,8)")
    parser.add_argument("--full-sw-batch-sizes", type=sizes, default=None,
                        help="a shorter sweep for the full volume (default: --sw-batch-sizes)")
    parser.add_argument("--brats-checkpoint", default=BRATS_CHECKPOINT)
    parser.add_argument("--brats-case", default=BRATS_CASE)
    parser.add_argument("--hippocampus-checkpoint", default=HIPPOCAMPUS_CHECKPOINT)
    parser.add_argument("--hippocampus-cases", type=int, default=20)
    parser.add_argument("--hippocampus-repeats", type=int, default=3, help="best total of this many passes (default 3)")
    parser.add_argument("--window-batch-sizes", type=sizes, default=None,
                        help="batch sizes for our mode=window (default: the MONAI sweep)")
    parser.add_argument("--overhead-repeats", type=int, default=5)
    parser.add_argument("--ours-first", action="store_true",
                        help="run window@B before monai@B (default after): a second run in the other order "
                             "cancels a drift of the machine's load")
    parser.add_argument("--default-scopes", default="crop,full,hippocampus",
                        help="scopes that also run monai_default@1, the old unfair peer (default: all)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--blend", default="gaussian", choices=("gaussian", "constant"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--logits", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.default_scopes = [s for s in args.default_scopes.split(",") if s]
    if args.worker:
        worker(args)
        return
    scopes = [s for s in args.scopes.split(",") if s]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise SystemExit(f"unknown scope(s) {unknown}; use {SCOPES}")
    torch.set_num_threads(args.threads)
    print(f"window {args.window}, overlap {args.overlap}, blend {args.blend}; {args.threads} threads, device "
          f"{args.device}; peak matmul now {peak_matmul_flops() / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        folder = Path(tmp)
        files: dict[str, Path] = {}
        for scope in scopes:
            if scope == "overhead":
                windowing_overhead(args, load_inputs("full", args)[0][0], args.overhead_repeats)
                continue
            images, truths, checkpoint = load_inputs(scope, args)
            files[scope] = folder / f"{scope}.npz"
            files[f"{scope}_checkpoint"] = Path(checkpoint).resolve()
            np.savez(files[scope], *images)
            from vol_transfer.transfer.checkpoint import (
                build_from_checkpoint,
                load_checkpoint,
            )

            flops = per_voxel_flops(build_from_checkpoint(load_checkpoint(checkpoint)))
            print(f"{scope}: {checkpoint}, {flops / 1e6:.2f} MFLOP/voxel", flush=True)
            results = {}
            for variant in variants_for(scope, args):
                results[variant] = run_variant(variant, scope, args, files, folder)
                print(f"  ran {scope} {variant}: {results[variant]['seconds']:.2f} s "
                      f"(peak {results[variant]['peak_flops'] / 1e9:.0f} GFLOP/s)", flush=True)
            report(scope, results, truths, flops)


if __name__ == "__main__":
    main()
