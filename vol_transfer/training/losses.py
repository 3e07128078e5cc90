"""Segmentation losses: soft Dice, Dice + cross-entropy, with class weights and ignored voxels.

Voxels marked invalid (padding added around volumes smaller than the window, label ``-1`` or a
``valid`` mask of 0) contribute nothing to either term. Losses are computed in float32 even under
bf16 autocast.

Example:
    >>> loss_fn = build_loss("dice_ce", num_classes=3, class_weights=[0.2, 1, 1])
    >>> logits = torch.zeros(2, 3, 8, 8, 8); label = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    >>> round(float(loss_fn(logits, label)), 4) > 0
    True
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

LossKind = Literal["dice", "dice_ce", "ce"]


def _valid_and_target(label: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    mask = label >= 0
    if valid is not None:
        mask = mask & (valid.reshape(label.shape) > 0)
    return mask, label.clamp_min(0)


class SegmentationLoss(torch.nn.Module):
    """Soft Dice (over the whole batch, per class), cross-entropy, or their sum.

    Args:
        kind: ``"dice"``, ``"ce"`` or ``"dice_ce"`` (equal-weight sum).
        num_classes: number of output channels, background included.
        class_weights: one weight per class; weights the Dice mean and the cross-entropy.
        include_background: whether class 0 takes part in the Dice term.
        smooth: added to Dice numerator and denominator (keeps empty classes finite).
    """

    def __init__(
        self,
        kind: LossKind = "dice_ce",
        num_classes: int = 2,
        class_weights: Sequence[float] | None = None,
        include_background: bool = False,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        if kind not in ("dice", "dice_ce", "ce"):
            raise ValueError(f"unknown loss kind {kind!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values for {num_classes} classes")
        self.kind = kind
        self.num_classes = num_classes
        self.include_background = include_background or num_classes == 1
        self.smooth = smooth
        weights = torch.ones(num_classes) if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def dice(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(target, self.num_classes).movedim(-1, 1).to(probs.dtype)
        m = mask.unsqueeze(1).to(probs.dtype)
        dims = [0] + list(range(2, probs.ndim))
        intersection = (probs * one_hot * m).sum(dims)
        denominator = (probs * m).sum(dims) + (one_hot * m).sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        first = 0 if self.include_background else 1
        weights = self.class_weights[first:].to(dice.device)
        return 1 - (dice[first:] * weights).sum() / weights.sum().clamp_min(1e-12)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_voxel = F.cross_entropy(logits, target, weight=self.class_weights.to(logits.device), reduction="none")
        m = mask.to(per_voxel.dtype)
        # normalise like PyTorch's weighted mean: by the summed weights of the valid voxels
        norm = (self.class_weights.to(logits.device)[target] * m).sum().clamp_min(1e-12)
        return (per_voxel * m).sum() / norm

    def forward(self, logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        mask, target = _valid_and_target(label.long(), valid)
        total = logits.new_zeros(())
        if self.kind in ("dice", "dice_ce"):
            total = total + self.dice(logits, target, mask)
        if self.kind in ("ce", "dice_ce"):
            total = total + self.cross_entropy(logits, target, mask)
        return total


def build_loss(kind: LossKind, num_classes: int, class_weights: Sequence[float] | None = None,
               include_background: bool = False, smooth: float = 1e-5) -> SegmentationLoss:
    """The loss a recipe's ``loss:`` section names."""
    return SegmentationLoss(kind, num_classes, class_weights, include_background, smooth)
