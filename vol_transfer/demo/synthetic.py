"""Small synthetic brain-like volumes for the demo and for tests: no download needed.

Three tasks:

- ``hippocampus``: a 1-channel "T1" head with a bright brain ellipsoid and a pair of small
  elongated structures left and right (labels 1 = anterior part, 2 = posterior part), as the
  study's source.
- ``tumour``: a 2-channel ("flair", "t1c") head with one lesion: oedema (FLAIR-bright, label 2)
  around a core (label 1 necrotic / 4 enhancing rim, the BraTS convention), so tumour core =
  {1, 4}: the study's target.
- ``lesion``: a 1-channel "T1c-like" head with one or two ring-enhancing lesions anywhere in the
  brain (1 = enhancing rim, 2 = necrotic centre): the demo's source, close to the tumour target.

Intensities get a smooth bias field and Rician-like noise so normalisation matters.

Example:
    >>> image, label = hippocampus_case(np.random.default_rng(0), shape=(40, 48, 40))
    >>> image.shape, sorted(np.unique(label).tolist())
    ((1, 40, 48, 40), [0, 1, 2])
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vol_transfer.io.atomic import atomic_path
from vol_transfer.io.volumes import save_volume


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    x, y, z = grid
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def _bias_and_noise(image: np.ndarray, grid, rng: np.random.Generator, noise: float) -> np.ndarray:
    x, y, z = grid
    coefficients = rng.uniform(-0.15, 0.15, size=3)
    bias = np.exp(coefficients[0] * x + coefficients[1] * y + coefficients[2] * z)
    real = image * bias + rng.normal(0, noise, image.shape)
    imaginary = rng.normal(0, noise, image.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _head(grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(0.9, 1.0, size=3)
    brain = _ellipsoid(grid, (0, 0, 0), 0.8 * scale) <= 1
    skull = (_ellipsoid(grid, (0, 0, 0), 0.92 * scale) <= 1) & ~brain
    image = np.where(brain, 0.6, 0.0) + np.where(skull, 0.25, 0.0)
    ventricles = _ellipsoid(grid, (0, 0.05, 0.15), (0.12, 0.3, 0.12)) <= 1
    image = np.where(ventricles, 0.2, image)
    return image.astype(np.float32), brain


def hippocampus_case(rng: np.random.Generator, shape: tuple[int, int, int] = (40, 48, 40)):
    """One synthetic hippocampus-like case: ``(image (1,X,Y,Z) float32, label (X,Y,Z) uint8)``."""
    grid = _grid(shape)
    image, _ = _head(grid, rng)
    label = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        centre = np.array([side * rng.uniform(0.35, 0.42), rng.uniform(-0.1, 0.1), rng.uniform(-0.25, -0.1)])
        radii = np.array([0.18, 0.45, 0.18]) * rng.uniform(0.85, 1.15, size=3)
        structure = _ellipsoid(grid, centre, radii) <= 1
        anterior = structure & (grid[1] > centre[1])
        label[anterior] = 1
        label[structure & ~anterior] = 2
        image[structure] = 0.85
    return _bias_and_noise(image, grid, rng, noise=0.04)[None], label


def tumour_case(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 40)):
    """One synthetic glioma-like case: ``(image (2,X,Y,Z) float32 [flair, t1c], label (X,Y,Z) uint8)``."""
    grid = _grid(shape)
    head, brain = _head(grid, rng)
    centre = rng.uniform(-0.3, 0.3, size=3)
    core_radii = rng.uniform(0.2, 0.3, size=3)
    core = (_ellipsoid(grid, centre, core_radii) <= 1) & brain
    necrosis = (_ellipsoid(grid, centre, core_radii * 0.55) <= 1) & brain
    oedema = (_ellipsoid(grid, centre, core_radii * 1.8) <= 1) & brain & ~core
    label = np.zeros(shape, np.uint8)
    label[oedema] = 2
    label[core] = 4
    label[necrosis] = 1
    flair = head.copy()
    flair[oedema] = 0.95
    flair[core] = 0.8
    flair[necrosis] = 0.7
    t1c = head * 0.9
    t1c[core] = 1.0  # enhancing rim
    t1c[necrosis] = 0.3
    channels = [_bias_and_noise(c, grid, rng, noise=0.05) for c in (flair, t1c)]
    return np.stack(channels), label


def lesion_case(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 40)):
    """One synthetic single-contrast ("T1c-like") lesion case: ``(image (1,X,Y,Z) float32, label (X,Y,Z) uint8)``.

    One or two ring-enhancing lesions anywhere in the brain: enhancing rim (label 1) around a dark
    necrotic centre (label 2), in a darker unlabelled halo. The demo's source task: it shares the
    target's lesion shapes and its T1c contrast, with other sizes, counts and intensities.
    """
    grid = _grid(shape)
    head, brain = _head(grid, rng)
    image = head * rng.uniform(0.85, 0.95)
    label = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        centre = rng.uniform(-0.4, 0.4, size=3)
        radii = rng.uniform(0.12, 0.3, size=3)
        rim = (_ellipsoid(grid, centre, radii) <= 1) & brain
        centre_part = (_ellipsoid(grid, centre, radii * rng.uniform(0.4, 0.65)) <= 1) & brain
        halo = (_ellipsoid(grid, centre, radii * 1.6) <= 1) & brain & ~rim & (label == 0)
        image[halo] *= rng.uniform(0.8, 0.95)
        image[rim] = rng.uniform(0.9, 1.1)
        image[centre_part] = rng.uniform(0.2, 0.4)
        label[rim] = 1
        label[centre_part] = 2
    return _bias_and_noise(image, grid, rng, noise=0.05)[None], label


def write_dataset(
    folder: Path, task: str, count: int, seed: int = 0, splits: tuple[float, float] = (0.6, 0.2)
) -> Path:
    """Write ``count`` synthetic cases as NIfTI plus a manifest CSV; return the manifest path.

    The first ``splits[0]`` fraction is train, the next ``splits[1]`` validation, the rest test.
    """
    make = {"hippocampus": hippocampus_case, "tumour": tumour_case, "lesion": lesion_case}[task]
    channels = ["flair", "t1c"] if task == "tumour" else ["image"]
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-like storage, as BraTS uses
    rows = []
    n_train, n_val = round(count * splits[0]), round(count * splits[1])
    for index in range(count):
        image, label = make(rng)
        subject = f"{task}_{index:03d}"
        paths = {}
        for name, data in zip(channels, image):
            paths[name] = f"{task}/{subject}_{name}.nii.gz"
            save_volume(data, folder / paths[name], affine=affine)
        paths["label"] = f"{task}/{subject}_label.nii.gz"
        save_volume(label, folder / paths["label"], affine=affine, dtype=np.uint8)
        split = "train" if index < n_train else "validation" if index < n_train + n_val else "test"
        rows.append({"subject_id": subject, "split": split, **paths})
    manifest = folder / f"{task}.csv"
    labels = {"hippocampus": ("0,1,2", "background,anterior,posterior"),
              "tumour": ("0,1,2,4", "background,necrosis,oedema,enhancing"),
              "lesion": ("0,1,2", "background,enhancing,necrosis")}[task]
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(f"# kind: segmentation\n# labels: {labels[0]}\n# label_names: {labels[1]}\n")
        handle.write(f"# dataset: synthetic {task}-like volumes made by vol_transfer.demo (seed {seed})\n")
        writer = csv.DictWriter(handle, fieldnames=["subject_id", "split", *channels, "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
