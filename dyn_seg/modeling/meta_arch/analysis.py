"""Whole-network FLOPs figures that need no forward pass."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from ..cost.flops import CellRouting, routing_flops
from ..network.backbone import DynamicNetwork
from .routed import RoutedModel, routed_model

__all__ = ["all_open_flops"]


def all_open_flops(model: nn.Module, size: Tuple[int, int]) -> Dict[str, float]:
    """MFLOPs of one ``size`` = (H, W) image with every gate activation at 1 (all paths open).

    ``model``: a routed model (:class:`~dyn_seg.modeling.meta_arch.routed.RoutedModel`: its
    ``dense_head_mflops(size)`` gives the heads), a :class:`DynamicNetwork` alone (no head
    FLOPs), or a plain module holding a segmentor's parts (a network ``backbone`` and a
    decoder ``sem_seg_head`` with ``flops(size)``, as the reference-parity checks build).
    ``size`` is the counting size (what ``INPUT.FIX_SIZE_FOR_FLOPS`` would say), e.g.
    (1024, 2048) for Cityscapes frames.

    Returns ``expected`` (every cell's operations and transitions; at 768 x 768 this is what
    ``MODEL.BUDGET.FLOPS_ALL`` normalises by), ``real`` (expected + gates + stem + head), and
    the parts ``gates``, ``stem`` and ``head``.
    """
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"size={tuple(size)} must be (H, W) with positive sizes, e.g. (1024, 2048)."
        )
    size = (int(size[0]), int(size[1]))
    if isinstance(model, DynamicNetwork):
        network, head_flops = model, 0.0
    elif isinstance(model, RoutedModel):
        network, head_flops = model.routed_network, float(model.dense_head_mflops(size))
    elif isinstance(getattr(model, "backbone", None), DynamicNetwork):  # segmentor parts
        network, head_flops = model.backbone, float(model.sem_seg_head.flops(size))
    else:
        routed = routed_model(model)  # a DDP wrapper, or a clear error
        network, head_flops = routed.routed_network, float(routed.dense_head_mflops(size))
    table, stem = network.flops_table(size)
    open_gates = {
        key: CellRouting(torch.ones(1, len(cost.paths)), dropped=False)
        for key, cost in table.items()
    }
    costs = network.routing_costs(size)
    expected, real = routing_flops(costs, open_gates, 1, torch.zeros(1))
    return {
        "real": float(real[0]) + stem + head_flops,
        "expected": float(expected[0]),
        "gates": costs.gates,
        "stem": stem,
        "head": head_flops,
    }
