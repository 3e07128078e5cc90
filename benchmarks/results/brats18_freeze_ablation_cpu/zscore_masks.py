"""Diagnosis check: is the z-score mask (``mask: nonzero``, per channel) the brain on BraTS 2018?

For each case of data_manifests/brats2018_4mod.csv: the fraction of brain voxels (any of T1, T2
non-zero) that are exactly 0 in T1 or in T2 (those a per-channel nonzero mask would leave out),
the same for tumour-core voxels, and the fraction of labelled voxels inside the brain.

    python benchmarks/results/brats18_freeze_ablation_cpu/zscore_masks.py [DATA_ROOT]
"""

from __future__ import annotations

import sys

import numpy as np

from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.manifest import read_manifest
from vol_transfer.io.volumes import load_volume


def main(data_root: str | None = None) -> None:
    manifest = read_manifest("data_manifests/brats2018_4mod.csv", data_root=resolve_data_root(data_root))
    rows = []
    for subject in manifest.subjects():
        t1, t2 = (np.asarray(load_volume(subject.channels[name]).array) for name in ("t1", "t2"))
        label = np.asarray(load_volume(subject.label).array)
        brain, core = (t1 != 0) | (t2 != 0), np.isin(label, [1, 4])
        rows.append([((t1 == 0) & brain).sum() / brain.sum(), ((t2 == 0) & brain).sum() / brain.sum(),
                     ((t1 == 0) & core).sum() / max(core.sum(), 1), ((t2 == 0) & core).sum() / max(core.sum(), 1),
                     brain[label > 0].mean()])
    a = np.array(rows)
    print(f"{len(rows)} cases; brain voxels exactly 0 in T1: mean {a[:, 0].mean():.5f}, max {a[:, 0].max():.5f}; "
          f"in T2: mean {a[:, 1].mean():.5f}, max {a[:, 1].max():.5f}")
    print(f"tumour-core voxels exactly 0: T1 max {a[:, 2].max():.5f}, T2 max {a[:, 3].max():.5f}; "
          f"labelled voxels inside the brain: min {a[:, 4].min():.5f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
