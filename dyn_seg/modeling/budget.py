"""The budget constraint: pull the expected FLOPs towards a target share of the maximum."""
from __future__ import annotations

from typing import Optional

import torch


def budget_weight(step_rate: float, unupdate_rate: float, warm_up: bool) -> float:
    """0 before ``unupdate_rate``; then 1, or a linear ramp over 2% of training with warm-up."""
    if step_rate < unupdate_rate:
        return 0.0
    if not warm_up:
        return 1.0
    return min(1.0, (step_rate - unupdate_rate) / 0.02)


def budget_loss(
    expected_flops: torch.Tensor,
    *,
    flops_all: float,
    mu: float,
    loss_weight: float,
    step_rate: float,
    unupdate_rate: float = 0.4,
    warm_up: bool = True,
) -> Optional[torch.Tensor]:
    """``loss_weight * w * (mean(expected_flops) / flops_all - mu) ** 2``, or None before the
    constraint starts (``step_rate < unupdate_rate``).

    ``expected_flops``: (N,) MFLOPs per image, differentiable through the gates. Finite for
    any finite input (zero FLOPs give ``loss_weight * w * mu**2``).
    """
    if step_rate < unupdate_rate:
        return None
    w = budget_weight(step_rate, unupdate_rate, warm_up)
    ratio = expected_flops.float().mean() / flops_all
    return loss_weight * w * (ratio - mu) ** 2
