"""vol_transfer.sampling: class-weighted window samplers, the seeded patch loader, augmentation.

Example (``subjects`` and ``load`` come from a manifest, so not run here)::

    from vol_transfer.sampling import Augmentation, BalancedSampler, PatchLoader
    loader = PatchLoader(subjects, load, BalancedSampler(96), batch_size=2,
                         augmentation=Augmentation.study(), seed=0, num_workers=2)
    batch = next(iter(loader)); batch["image"].shape   # torch.Size([2, 2, 96, 96, 96])

See :mod:`vol_transfer.sampling.loader` for the batch format and exact resume.
"""

from vol_transfer.sampling.augment import Augmentation, AugmentParams, Patch, extract_patch
from vol_transfer.sampling.balanced import BalancedSampler
from vol_transfer.sampling.base import PatchSampler, SamplingError, SamplingWarning, eligible_box
from vol_transfer.sampling.loader import PatchLoader, PatchStream
from vol_transfer.sampling.uniform import UniformSampler
from vol_transfer.sampling.weighted import WeightedSampler

__all__ = [
    "Augmentation", "AugmentParams", "BalancedSampler", "PatchLoader", "PatchSampler", "PatchStream", "Patch",
    "SamplingError", "SamplingWarning", "UniformSampler", "WeightedSampler", "eligible_box",
    "extract_patch",
]
