"""The budget constraint (``MODEL.BUDGET.*``): pull the expected FLOPs towards a target
share of the maximum, and log the routing of each training step.

:class:`BudgetConstraint` is meta-architecture independent: any meta-architecture with a
routed backbone builds it with ``BudgetConstraint.from_config(cfg)``, adds
``budget.losses(routing, step_rate)`` to its losses and calls ``budget.log_routing(...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from detectron2.utils.events import get_event_storage

from .record import RoutingRecord
from .stats import open_path_counts, open_rates

__all__ = ["BudgetConstraint", "budget_loss", "budget_weight"]


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


@dataclass(frozen=True)
class BudgetConstraint:
    """``MODEL.BUDGET.*``, validated, with the loss and the routing log of a training step."""

    constrain: bool = False
    loss_weight: float = 0.5
    mu: float = 0.1
    flops_all: float = 26300.0
    unupdate_rate: float = 0.4
    warm_up: bool = True

    def __post_init__(self):
        checks = [
            ("LOSS_WEIGHT", self.loss_weight, self.loss_weight >= 0, ">= 0"),
            ("LOSS_MU", self.mu, 0 <= self.mu <= 1, "in [0, 1] (a share of FLOPS_ALL)"),
            ("FLOPS_ALL", self.flops_all, self.flops_all > 0,
             "> 0 (MFLOPs of all cells, 26300 at 768x768)"),
            ("UNUPDATE_RATE", self.unupdate_rate, 0 <= self.unupdate_rate <= 1, "in [0, 1]"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(
                    f"MODEL.BUDGET.{key}={value} is not allowed: it must be {allowed}."
                )

    @classmethod
    def from_config(cls, cfg) -> BudgetConstraint:
        b = cfg.MODEL.BUDGET
        return cls(b.CONSTRAIN, b.LOSS_WEIGHT, b.LOSS_MU, b.FLOPS_ALL, b.UNUPDATE_RATE,
                   b.WARM_UP)

    def losses(self, routing: RoutingRecord, step_rate: float) -> Dict[str, torch.Tensor]:
        """``{"loss_budget": ...}`` when constraining and the constraint has started."""
        if not self.constrain:
            return {}
        loss = budget_loss(routing.expected_flops, flops_all=self.flops_all, mu=self.mu,
                           loss_weight=self.loss_weight, step_rate=step_rate,
                           unupdate_rate=self.unupdate_rate, warm_up=self.warm_up)
        return {} if loss is None else {"loss_budget": loss}

    @staticmethod
    def log_routing(routing: RoutingRecord, real: Optional[torch.Tensor] = None,
                    expected: Optional[torch.Tensor] = None) -> None:
        """Put this step's FLOPs (per-image MFLOPs, when given) and open-gate rates (overall
        and per layer) into the active EventStorage; nothing outside a trainer."""
        try:
            storage = get_event_storage()
        except AssertionError:  # no storage outside a trainer
            return
        stats = {}
        if real is not None:
            stats["flops/real_gflops"] = float(real.mean()) * 1e-3
        if expected is not None:
            stats["flops/expected_gflops"] = float(expected.mean()) * 1e-3
        counts = open_path_counts({k: c.alpha for k, c in routing.cells.items()})
        if counts:
            overall, layers = open_rates(counts)
            stats["routing/gate_active_rate"] = overall
            for layer, rate in layers.items():
                stats[f"routing/layer_{layer}_active_rate"] = rate
        if stats:
            storage.put_scalars(**stats)
