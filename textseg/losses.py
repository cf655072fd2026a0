"""Losses for per-prompt sigmoid outputs with partial labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textseg.transforms import IGNORE_CHANNEL

__all__ = ["PartialLabelDiceCELoss"]


class PartialLabelDiceCELoss(nn.Module):
    """Soft Dice + binary cross-entropy per prompt channel, averaged over supervised channels only.

    A target channel filled with :data:`textseg.transforms.IGNORE_CHANNEL` (structure not annotated in
    that case) contributes nothing, so datasets with different label sets can be mixed.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        smooth: Dice smoothing added to numerator and denominator.
        pos_weight_cap: when set, the cross-entropy of each channel weighs its foreground voxels by (background
            voxels / foreground voxels), at most this cap (balanced cross-entropy), so a structure filling 1 % of a
            crop is not drowned by its background; ``None``: unweighted.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1.0, pos_weight_cap: float | None = None):
        super().__init__()
        if pos_weight_cap is not None and pos_weight_cap < 1:
            raise ValueError(f"pos_weight_cap must be at least 1, got {pos_weight_cap}.")
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.smooth = smooth
        self.pos_weight_cap = pos_weight_cap

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: [B, K, *S] mask logits.
            target: [B, K, *S] with 1 (inside), 0 (outside) or IGNORE_CHANNEL (unsupervised channel).

        Returns:
            scalar loss; zero (with gradient) when no channel is supervised.
        """
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape.")
        target = target.to(logits.dtype)
        flat_logits = logits.flatten(2)
        flat_target = target.flatten(2)
        supervised = (flat_target != IGNORE_CHANNEL).all(dim=2)  # [B, K]
        if not supervised.any():
            return logits.sum() * 0.0
        flat_target = flat_target.clamp(min=0.0)
        probs = torch.sigmoid(flat_logits)
        intersection = (probs * flat_target).sum(2)
        denominator = probs.sum(2) + flat_target.sum(2)
        dice = 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        pos_weight = None
        if self.pos_weight_cap is not None:
            foreground = flat_target.sum(2, keepdim=True)
            pos_weight = ((flat_target.shape[2] - foreground) / foreground.clamp(min=1.0)).clamp(1.0, self.pos_weight_cap)
        ce = F.binary_cross_entropy_with_logits(flat_logits, flat_target, pos_weight=pos_weight, reduction="none").mean(2)
        per_channel = self.lambda_dice * dice + self.lambda_ce * ce
        return per_channel[supervised].mean()
