"""Losses that stay finite on batches without a labelled pixel."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["ignore_safe_cross_entropy"]


def ignore_safe_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross entropy over the pixels whose target is not ``ignore_index``, exactly
    ``F.cross_entropy(..., reduction="mean")``; 0 (with zero gradient) when every target
    is ``ignore_index``, where PyTorch's mean divides 0 by 0 and returns NaN (a label file
    without a valid pixel would stop training as if the learning rate were too high)."""
    if bool((targets != ignore_index).any()):
        return F.cross_entropy(logits, targets, weight=weight, reduction="mean",
                               ignore_index=ignore_index)
    return logits.sum() * 0.0
