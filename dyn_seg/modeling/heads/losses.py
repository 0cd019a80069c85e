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
    # no host read (a training step decides nothing on the host): the sum over the valid
    # pixels divided by their (weighted) count, at least 1 -- the same reduction the mean
    # performs, so the value is unchanged wherever a pixel is valid
    total = F.cross_entropy(logits, targets, weight=weight, reduction="sum",
                            ignore_index=ignore_index)
    valid = targets != ignore_index
    if weight is None:
        count = valid.sum().to(total.dtype)
    else:
        count = weight[targets.clamp(min=0, max=weight.numel() - 1)].mul(valid).sum()
    return total / count.clamp(min=1.0) if weight is None else total / torch.where(
        count > 0, count, torch.ones_like(count))
