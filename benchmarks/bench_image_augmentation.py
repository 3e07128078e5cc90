"""2-D training augmentation: ours (one batched affine grid + per-image intensity) vs MONAI's transforms.

The same real chest X-rays (``../shared/data/chest_xray_kermany_224``), the same changes and ranges —
rotation ±10°, zoom 1 ± 0.1, shift ± 6 %, contrast, brightness, gamma, blur (p 0.2), noise — as
:class:`vol_transfer.training.image_augmentation.ImageAugmentation` defaults, in batches of 32:

- ours: :func:`augment_images` on the batch;
- MONAI: a ``Compose`` of ``RandAffine`` (bilinear, border padding), ``RandScaleIntensity``
  (contrast stand-in), ``RandShiftIntensity``, ``RandAdjustContrast`` (gamma), ``RandGaussianSmooth``
  and ``RandGaussianNoise``, per image (MONAI's array transforms take one image), all ``prob=1``
  except the blur (0.2), ``lazy`` off, torch tensors in, float32 — its fastest CPU settings here.

Prints images/s of both and the ratio, for each image size; then, for scale, CBR-LargeT's own
training (SGD step, batch 32, channels-last) and evaluation throughput at those sizes, which sets the
time per epoch of the pneumonia recipes (4,168 training images an epoch).

    python benchmarks/bench_image_augmentation.py [--sizes 96 128 224] [--batches 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

from vol_transfer.io.images2d import load_image_stack
from vol_transfer.training.image_augmentation import ImageAugmentation, augment_images

DATA = os.environ.get("VOL_TRANSFER_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def monai_pipeline(settings: ImageAugmentation, size: int):
    import monai.transforms as T

    return T.Compose([
        T.RandAffine(prob=1.0, rotate_range=np.deg2rad(settings.rotate_degrees),
                     scale_range=settings.scale, translate_range=settings.translate * size, mode="bilinear", padding_mode="border"),
        T.RandScaleIntensity(factors=settings.contrast, prob=1.0),
        T.RandShiftIntensity(offsets=settings.brightness, prob=1.0),
        T.RandAdjustContrast(gamma=(1 / (1 + settings.gamma), 1 + settings.gamma), prob=1.0),
        T.RandGaussianSmooth(sigma_x=(0.3, settings.blur_sigma), sigma_y=(0.3, settings.blur_sigma),
                             prob=settings.blur_probability),
        T.RandGaussianNoise(std=settings.noise_std, prob=1.0),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 224])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(glob.glob(os.path.join(DATA, "chest_xray_kermany_224", "train", "*", "*.jpeg")))[::40][:32]
    settings = ImageAugmentation()
    print(f"{len(paths)} real X-rays, batch 32, {args.batches} batches, {args.threads} thread(s), "
          f"load {os.getloadavg()[0]:.1f}")
    print("| size | ours img/s | MONAI img/s | ours ÷ MONAI |")
    print("|---|---|---|---|")
    for size in args.sizes:
        images = load_image_stack(paths, size, 1, progress=False).astype(np.float32) / 255
        augment_images(images, settings, np.random.default_rng(0))  # warm-up
        start = time.perf_counter()
        for b in range(args.batches):
            augment_images(images, settings, np.random.default_rng(b))
        ours = args.batches * len(images) / (time.perf_counter() - start)
        monai_aug = monai_pipeline(settings, size)
        monai_aug.set_random_state(seed=0)
        tensors = [torch.from_numpy(image) for image in images]
        [monai_aug(t) for t in tensors[:4]]  # warm-up
        start = time.perf_counter()
        for _ in range(args.batches):
            torch.stack([torch.as_tensor(monai_aug(t)) for t in tensors])
        theirs = args.batches * len(images) / (time.perf_counter() - start)
        print(f"| {size} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}× |")
    print("\n| size | CBR-LargeT train img/s | eval img/s | training minutes per epoch (4,168 images) |")
    print("|---|---|---|---|")
    for size in args.sizes:
        train, evaluate = network_throughput(size)
        print(f"| {size} | {train:.0f} | {evaluate:.0f} | {4168 / train / 60:.1f} |")


def network_throughput(size: int, batch: int = 32, steps: int = 3) -> tuple[float, float]:
    """Images/s of one SGD step and of an eval forward pass of grey CBR-LargeT at ``size``."""
    from vol_transfer.nets.classifiers2d import CBRLargeT

    net = CBRLargeT(1, 2).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 1, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    train = steps * batch / (time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        net(x)
        evaluate = batch / (time.perf_counter() - start)
    return train, evaluate


if __name__ == "__main__":
    main()
