"""2D images (JPEG/PNG, or a 2D DICOM) loaded as small uint8 arrays for classification.

Images are read with Pillow (DICOM through :func:`vol_transfer.io.dicom.load_dicom_image`), turned
grey or RGB, resized to a square side with antialiasing and kept as ``uint8`` ``(N, C, H, W)``
stacks: 5,216 chest X-rays at 128×128 take 85 MB, small enough to keep in memory for many
epochs. Scale batches to ``[0, 1]`` with :func:`vol_transfer.preprocessing.intensity.scale_uint8`.

Example (needs image files, so not run here)::

    stack = load_image_stack(["a.jpeg", "b.jpeg"], size=128, channels=1)
    stack.shape, stack.dtype   # ((2, 1, 128, 128), dtype('uint8'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vol_transfer.errors import InputDataError, PathLike

DICOM_SUFFIXES = (".dcm", ".dicom")


def _dicom_as_uint8(path: Path) -> np.ndarray:
    """8-bit DICOM pixels as they are (so /255 applies as to JPEGs); deeper ones through their window."""
    from vol_transfer.io.dicom import load_dicom_image

    image = load_dicom_image(path)
    if int(image.dataset.get("BitsStored", 16)) <= 8:
        return np.clip(np.rint(image.array), 0, 255).astype(np.uint8)
    return np.rint(image.windowed() * 255).astype(np.uint8)


def load_image(path: PathLike, size: int | None = None, channels: int = 1) -> np.ndarray:
    """One image as ``uint8`` ``(channels, H, W)``; ``size`` resizes to ``size × size``.

    Raises :class:`InputDataError` naming the file when it is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "image file not found", "check the manifest path and --data-root")
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            image = Image.fromarray(_dicom_as_uint8(path))
        else:
            with Image.open(path) as opened:
                opened.draft("L" if channels == 1 else "RGB", (size, size) if size else opened.size)  # fast JPEG decode
                image = opened.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputDataError(path, f"cannot read image ({type(error).__name__}: {error})",
                             "re-export the file as PNG/JPEG") from None
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    array = np.asarray(image, dtype=np.uint8)
    return array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def load_image_stack(paths: Sequence[PathLike], size: int, channels: int = 1, progress: bool = False) -> np.ndarray:
    """All images as one ``uint8`` ``(N, channels, size, size)`` array."""
    stack = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    iterator = enumerate(paths)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(paths), desc="loading images", unit="img", leave=False)
    for index, path in iterator:
        stack[index] = load_image(path, size=size, channels=channels)
    return stack
