"""Whole-volume inference on a real BraTS case: MONAI ``sliding_window_inference`` vs ours.

Same network (our HighRes3DNet, 2 → 2 classes, eval mode) and the same FLAIR+T1c volume
(2×240×240×155) for every variant:

* ``monai``        — MONAI ``sliding_window_inference``, roi 96³, overlap 0.25, Gaussian, sw_batch 1
                     (fp32, default memory layout: what a MONAI user runs);
* ``window``       — our windows with the same placement and blending (fp32, channels_last, BN folded);
* ``whole``        — our exact whole-volume pass (fp32);
* ``tiled``        — our exact halo tiles under ``--budget`` GiB (what ``--memory-budget`` picks);
* ``*_bf16``       — the same under bfloat16 autocast;
* ``pipeline``     — what ``vol-transfer infer`` runs with the BRATS recipes' preprocessing: crop to the
                     foreground box (+4 voxels, ``crop_foreground: 4``), the exact whole pass on the
                     crop, labels restored to the full grid (background outside the box);
* ``monai_crop``   — MONAI ``sliding_window_inference`` on that same crop, restored the same way (the
                     fair peer for ``pipeline``: both skip the empty air around the head);
                     ``pipeline@16`` / ``monai_crop@16`` use a crop margin of 16 voxels instead.

Every variant runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own;
``Δmem`` is the peak minus the memory after loading the volume and the network. Agreement is
measured against MONAI's output: voxel agreement of the argmax and Dice between the two
foreground label maps; ``max|Δlogit|`` against our exact whole-volume logits.

Input: the case z-scored per channel over the head (``mask: foreground``, as the BRATS recipes do),
so the background is 0.

Meaningful agreement: an untrained network's argmax is noise, so the network is made to segment
something: BatchNorm running statistics are set from real crops (train-mode passes, cumulative
averaging, no weight updates), then only the last layer is fitted to this case's tumour core as a
class-balanced logistic regression on the frozen features (see :func:`make_network`). The
predicted fraction and Dice against the true tumour core are printed.

FLOP-bound limit: voxels × per-voxel FLOPs (2·k³·Cin·Cout summed over the convolutions) ÷ the peak
matmul rate measured here (2048² torch.mm, best of 3), in fp32 and bf16.

    python benchmarks/bench_inference.py --quick          # 240×240×64 slab, for development
    python benchmarks/bench_inference.py                  # the full 240×240×155 volume
    python benchmarks/bench_inference.py --variants monai,whole,tiled
    python benchmarks/bench_inference.py --variants monai,monai_crop,whole,pipeline \
        --checkpoint runs/brats_tc_finetune/checkpoints/best.pt     # a trained network + its preprocessing

With ``--checkpoint`` the network and its stored preprocessing replace the linear probe: every
variant sees the volume after the checkpoint's steps except the crop (which only ``pipeline`` and
``monai_crop`` apply), and the tumour-core truth is carried onto that grid.
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
from pathlib import Path

import numpy as np
import torch

ALL_VARIANTS = ("monai", "window", "whole", "tiled", "window_bf16", "whole_bf16", "pipeline", "monai_crop")
LABEL_ONLY = ("pipeline", "monai_crop")
RECIPE_INTENSITY = [{"kind": "zscore", "mask": "foreground"}]  # recipes/brats_tc_finetune.yaml  # variants that return a label map on the full grid, not logits
CASE = "brats2015_flair_t1c/test/brats_2013_pat0001_1"


def load_case(data_root: str | None, quick: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLAIR+T1c ``(2, X, Y, Z)``, the tumour-core mask (labels 1, 3, 4) and the affine."""
    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.volumes import load_channels, load_volume

    case = resolve_data_root(data_root) / CASE
    volume = load_channels([case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"])
    array = volume.array
    core = np.isin(load_volume(case / "OTMultiClass.nii.gz").array[0], [1, 3, 4])
    if quick:
        middle = array.shape[3] // 2
        array, core = array[..., middle - 32 : middle + 32], core[..., middle - 32 : middle + 32]
    return np.ascontiguousarray(array, dtype=np.float32), core, volume.affine


def _crops(image: np.ndarray, core: np.ndarray, rng: np.random.Generator, count: int, size: int):
    """Crops centred on random tumour-core voxels (half) or anywhere in the volume (half)."""
    shape = np.asarray(image.shape[1:])
    size_3 = np.minimum(size, shape)
    positives = np.argwhere(core)
    for i in range(count):
        centre = positives[rng.integers(len(positives))] if i % 2 == 0 and len(positives) else rng.integers(0, shape)
        corner = np.clip(centre - size_3 // 2, 0, shape - size_3)
        where = tuple(slice(int(c), int(c + s)) for c, s in zip(corner, size_3))
        yield torch.from_numpy(np.ascontiguousarray(image[(slice(None), *where)]))[None], core[where]


def make_network(image: np.ndarray, core: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """HighRes3DNet whose argmax means something: BatchNorm statistics set from real crops, then
    the last layer (conv_2) fitted as a class-balanced logistic regression of tumour core on the
    frozen conv_1 features ("linear probe"). Nothing else is trained."""
    from vol_transfer.nets.highres3dnet import HighRes3DNet

    torch.manual_seed(seed)
    net = HighRes3DNet(in_channels=2, num_classes=2)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = None  # cumulative average over the calibration passes
    rng = np.random.default_rng(seed)
    net.train()
    with torch.no_grad():
        for crop, _ in _crops(image, core, rng, 4, 48):
            net(crop)
    net.eval()
    features, targets = [], []
    with torch.no_grad():
        for crop, mask in _crops(image, core, rng, 4, 48):
            feature = net.features(crop)[0].reshape(net.conv_2.conv.in_channels, -1).T
            pick = torch.from_numpy(rng.choice(feature.shape[0], size=min(20000, feature.shape[0]), replace=False))
            features.append(feature[pick])
            targets.append(torch.from_numpy(mask.reshape(-1)[pick.numpy()]).long())
    x, y = torch.cat(features), torch.cat(targets)
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = torch.nn.Linear(x.shape[1], 2)
    weight = torch.tensor([1.0 / max(1, int((y == 0).sum())), 1.0 / max(1, int((y == 1).sum()))]) * len(y) / 2
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=100)

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear((x - mean) / std), y, weight=weight)
        loss = loss + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():  # fold the standardisation into conv_2 and make its BN the identity
        conv, bn = net.conv_2.conv, net.conv_2.bn
        conv.weight.copy_((linear.weight / std).reshape(conv.weight.shape))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(linear.bias - (linear.weight / std) @ mean)
    return net


def prepare_for_checkpoint(path: str, image: np.ndarray, core: np.ndarray, affine: np.ndarray):
    """The checkpoint's network, the volume after its preprocessing minus the crop, the truth on
    that grid, and the checkpoint's crop margin (4 if it stores none)."""
    from vol_transfer.io.volumes import Volume
    from vol_transfer.preprocessing.pipeline import Preprocessor
    from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

    checkpoint = load_checkpoint(path)
    spec = dict((checkpoint.metadata or {}).get("preprocessing") or {})
    margin = spec.pop("crop_foreground", None)
    prepared, inverse = Preprocessor.from_spec(spec).apply(Volume(array=image, affine=affine))
    core = inverse.forward(core.astype(np.uint8), order="nearest").astype(bool)
    return np.ascontiguousarray(prepared.array, dtype=np.float32), core, build_from_checkpoint(checkpoint), \
        4 if margin is None else int(margin)


def per_voxel_flops(net: torch.nn.Module) -> int:
    total = 0
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            total += 2 * math.prod(module.kernel_size) * module.in_channels // module.groups * module.out_channels
    return total


def peak_matmul_flops(dtype: torch.dtype, size: int = 2048) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def load_network(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

        return build_from_checkpoint(load_checkpoint(args.checkpoint))
    from vol_transfer.nets.highres3dnet import HighRes3DNet

    net = HighRes3DNet(in_channels=2, num_classes=2)
    net.load_state_dict(torch.load(args.weights, weights_only=True))
    return net


def foreground_crop(image: np.ndarray, margin: int):
    """The recipes' ``crop_foreground`` step on the prepared array (identity affine: voxels only)."""
    from vol_transfer.preprocessing.spatial import plan_foreground_crop

    return plan_foreground_crop(image, np.eye(4), margin)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from vol_transfer.inference import InferenceOptions, predict_logits

    image = torch.from_numpy(np.load(args.image))
    net = load_network(args).eval().to(args.device)
    # the peak rate right before this run: the machine is shared, so contention changes over time
    peaks = {"fp32": peak_matmul_flops(torch.float32), "bf16": peak_matmul_flops(torch.bfloat16)}
    baseline = maxrss_bytes()
    variant, _, margin_text = args.worker.partition("@")  # pipeline@16: a crop margin of 16 voxels
    margin = int(margin_text) if margin_text else args.crop_margin
    computed = math.prod(image.shape[1:])  # voxels the network runs on (the crop for the crop variants)
    start = time.perf_counter()
    if variant in ("monai", "monai_crop"):
        from monai.inferers import sliding_window_inference

        crop = foreground_crop(image.numpy(), margin) if variant == "monai_crop" else None
        source = image if crop is None else torch.from_numpy(crop.forward(image.numpy()))
        computed = math.prod(source.shape[1:])
        with torch.no_grad():
            logits = sliding_window_inference(source[None].to(args.device), (96, 96, 96), 1, net,
                                              overlap=0.25, mode="gaussian")[0]
        output = torch.as_tensor(logits).float().cpu()
        if crop is not None:
            output = torch.from_numpy(crop.backward(output.argmax(0).to(torch.uint8).numpy()))
    elif variant == "pipeline":
        from vol_transfer.inference.predict import logits_to_labels
        from vol_transfer.io.volumes import Volume
        from vol_transfer.preprocessing.pipeline import Preprocessor

        prepared, inverse = Preprocessor.from_spec({"crop_foreground": margin}).apply(
            Volume(array=image.numpy(), affine=np.eye(4)))
        computed = math.prod(prepared.spatial_shape)
        logits = predict_logits(net, prepared.array, InferenceOptions(mode="whole", device=args.device))
        output = torch.from_numpy(inverse.restore(logits_to_labels(logits).numpy(), order="nearest"))
    else:
        base, _, precision = variant.partition("_")
        options = dict(mode=base, bf16=precision == "bf16", window=96, overlap=0.25, blend="gaussian", batch_size=2)
        if base == "tiled":
            options["memory_budget_gb"] = args.budget
        output = predict_logits(net, image, **options)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    np.save(args.logits, output.numpy())
    print(json.dumps({"variant": args.worker, "seconds": seconds, "peak": maxrss_bytes(), "baseline": baseline,
                      "peak_flops": peaks, "computed_voxels": computed}))


def run_variant(variant: str, args: argparse.Namespace, files: dict[str, Path], folder: Path) -> dict:
    logits = folder / f"{variant}.npy"
    command = [sys.executable, __file__, "--worker", variant, "--image", str(files["image"]), "--weights",
               str(files["weights"]), "--logits", str(logits), "--threads", str(args.threads), "--budget",
               str(args.budget), "--device", args.device, "--crop-margin", str(args.crop_margin)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["logits"] = logits
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def main() -> None:
    from vol_transfer.preprocessing.pipeline import Preprocessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 240×240×64 slab instead of the whole volume")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"comma list of {ALL_VARIANTS}")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=3.0, help="GiB for the tiled variant (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained checkpoint: its network and preprocessing replace the linear probe")
    parser.add_argument("--crop-margin", type=int, default=None,
                        help="foreground-crop margin for pipeline/monai_crop (default: the checkpoint's, else 4)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--logits", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(v for v in variants if v.partition("@")[0] not in ALL_VARIANTS
                     or ("@" in v and (v.partition("@")[0] not in LABEL_ONLY or not v.partition("@")[2].isdigit())))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; use {ALL_VARIANTS} (pipeline@M / monai_crop@M: crop margin M)")
    image, core, affine = load_case(args.data_root, args.quick)
    if args.checkpoint:
        image, core, net, margin = prepare_for_checkpoint(args.checkpoint, image, core, affine)
    else:  # the BRATS recipes' normalisation: head-only z-score, background → 0
        image = Preprocessor.from_spec({"intensity": RECIPE_INTENSITY}).normalise(image)
        net, margin = make_network(image, core), 4
    args.crop_margin = margin if args.crop_margin is None else args.crop_margin
    voxels = math.prod(image.shape[1:])
    flops = per_voxel_flops(net)
    peaks = {"fp32": peak_matmul_flops(torch.float32), "bf16": peak_matmul_flops(torch.bfloat16)}
    print(f"volume {tuple(image.shape)} ({'quick slab' if args.quick else 'full'}), {voxels:,} voxels; "
          f"HighRes3DNet {flops / 1e6:.2f} MFLOP/voxel → {voxels * flops / 1e12:.2f} TFLOP per pass")
    print(f"peak matmul now: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
          f"({args.threads} threads, device {args.device}); each variant's FLOP bound uses the peak measured "
          "in its own process right before it ran")
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        folder = Path(tmp)
        files = {"image": folder / "image.npy", "weights": folder / "weights.pt"}
        np.save(files["image"], image)
        torch.save(net.state_dict(), files["weights"])
        results = {}
        for variant in variants:
            results[variant] = run_variant(variant, args, files, folder)
            r = results[variant]
            print(f"  ran {variant}: {r['seconds']:.1f} s (peak fp32 {r['peak_flops']['fp32'] / 1e9:.0f} GFLOP/s)", flush=True)
        logits = {v: np.load(r["logits"]) for v, r in results.items()}
    labels = {v: out if v.partition("@")[0] in LABEL_ONLY else out.argmax(0) for v, out in logits.items()}
    reference, exact = labels.get("monai"), labels.get("whole")
    monai_time = results["monai"]["seconds"] if "monai" in results else math.nan
    header = ("variant", "time s", "× MONAI", "voxels computed", "peak GiB", "Δmem GiB", "agree %", "Dice vs MONAI",
              "Dice vs exact", "max|Δlogit| vs whole", "Dice vs truth", "peak GFLOP/s", "FLOP-bound s", "× bound")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant, r in results.items():
        predicted = labels[variant]
        agree = dice_monai = dice_exact = delta = math.nan
        if reference is not None:
            agree = 100.0 * float((predicted == reference).mean())
            dice_monai = dice(predicted == 1, reference == 1)
        if exact is not None:
            dice_exact = dice(predicted == 1, exact == 1)
            if variant.partition("@")[0] not in LABEL_ONLY:
                delta = float(np.abs(logits[variant] - logits["whole"]).max())
        precision = "bf16" if variant.endswith("bf16") else "fp32"
        computed = r["computed_voxels"]
        bound = computed * flops / r["peak_flops"][precision]
        print(f"| {variant} | {r['seconds']:.1f} | {r['seconds'] / monai_time:.3f} | {computed / voxels:.0%} | "
              f"{r['peak'] / 2**30:.2f} | {(r['peak'] - r['baseline']) / 2**30:.2f} | {agree:.3f} | {dice_monai:.4f} | "
              f"{dice_exact:.4f} | {delta:.2e} | {dice(predicted == 1, core):.3f} | "
              f"{r['peak_flops'][precision] / 1e9:.0f} | {bound:.1f} | {r['seconds'] / bound:.2f} |")
    print(f"(voxels computed: share of the {voxels:,} voxels the network ran on, overlap not counted; "
          "FLOP bound = those voxels × per-voxel FLOPs ÷ peak matmul rate)")

if __name__ == "__main__":
    main()
