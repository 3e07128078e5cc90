"""Candidate-centred patches on the real chest CT: vol_transfer vs MONAI, side by side.

Ours: :func:`vol_transfer.preprocessing.patches.extract_candidate_patches` (world LPS → voxel,
three 2D planes + a cube per candidate, padding only where a patch leaves the image).
MONAI: the usual recipe — pad the whole volume once by half a patch (``BorderPad``), then
``SpatialCrop(roi_center, roi_size)`` per candidate for the cube and each plane (MONAI has no
world-coordinate step; the same voxel centres are given to both). Outputs are checked equal.

    python benchmarks/bench_candidate_patches.py [--candidates 500] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cube", type=int, default=32)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from monai.transforms import BorderPad, SpatialCrop

    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.dicom import load_dicom_series
    from vol_transfer.preprocessing.patches import Candidate, extract_candidate_patches, voxel_to_world

    ct = load_dicom_series(resolve_data_root(args.data_root) / "lung_ct_dicom" / "series_B40f")
    shape = np.array(ct.spatial_shape)
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, shape, size=(args.candidates, 3))  # many near the 30-slice borders
    candidates = [Candidate(ct.header["series_uid"], tuple(voxel_to_world(ct.affine, v, "LPS"))) for v in voxels]
    pad_value = float(ct.array.min())

    start = time.perf_counter()
    ours = extract_candidate_patches(ct, candidates, size=args.size, cube=args.cube, pad_value=pad_value)
    ours_s = time.perf_counter() - start

    half = max(args.size, args.cube) // 2
    start = time.perf_counter()
    padded = BorderPad(spatial_border=half, value=pad_value)(torch.from_numpy(ct.array))
    monai_patches = []
    for v in voxels:
        centre = v + half
        cube = SpatialCrop(roi_center=centre.tolist(), roi_size=[args.cube] * 3)(padded)
        planes = {
            "axial": SpatialCrop(roi_center=centre.tolist(), roi_size=[args.size, args.size, 1])(padded)[0, :, :, 0],
            "coronal": SpatialCrop(roi_center=centre.tolist(), roi_size=[args.size, 1, args.size])(padded)[0, :, 0, :],
            "sagittal": SpatialCrop(roi_center=centre.tolist(), roi_size=[1, args.size, args.size])(padded)[0, 0],
        }
        monai_patches.append((cube[0], planes))
    monai_s = time.perf_counter() - start

    same = all(
        np.array_equal(p.cube, np.asarray(c)) and all(np.array_equal(p.planes[k], np.asarray(planes[k])) for k in planes)
        for p, (c, planes) in zip(ours, monai_patches)
    )
    print(f"{args.candidates} candidates on lung_ct_dicom (512x512x30), 3 planes {args.size}^2 + cube {args.cube}^3")
    print(f"{'method':<28}{'seconds':>10}{'ms/candidate':>15}")
    print(f"{'vol_transfer (world->voxel)':<28}{ours_s:>10.3f}{1000 * ours_s / args.candidates:>15.3f}")
    print(f"{'MONAI BorderPad+SpatialCrop':<28}{monai_s:>10.3f}{1000 * monai_s / args.candidates:>15.3f}")
    print(f"ratio MONAI / ours: {monai_s / ours_s:.2f}x   identical patches: {same}")


if __name__ == "__main__":
    main()
