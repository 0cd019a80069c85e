"""Whole-network FLOPs figures that need no forward pass."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .backbone import DynamicNetwork
from .flops import CellRouting, routing_flops

__all__ = ["HEAD_ATTRIBUTES", "all_open_flops", "model_head"]

#: Where the models with an analytic head count keep that head: the semantic segmentor's
#: decoder and the classifier's pooling / linear head (both have ``flops(size)``).
HEAD_ATTRIBUTES = ("sem_seg_head", "cls_head")


def model_head(model: nn.Module):
    """``(attribute name, head)`` of ``model`` (see :data:`HEAD_ATTRIBUTES`), or
    ``(None, None)`` when it has none of them."""
    for name in HEAD_ATTRIBUTES:
        head = getattr(model, name, None)
        if head is not None:
            return name, head
    return None, None


def all_open_flops(model: nn.Module, size: Tuple[int, int]) -> Dict[str, float]:
    """MFLOPs of one ``size`` = (H, W) image with every gate activation at 1 (all paths open).

    ``model``: a segmentor or classifier with ``backbone`` (a :class:`DynamicNetwork`) and
    ``sem_seg_head`` / ``cls_head`` (a head with a ``flops(size)`` method), a routed
    meta-architecture (:class:`~dyn_seg.modeling.routed.RoutedMetaArchMixin`: its
    ``dense_head_mflops(size)`` gives the heads), or a :class:`DynamicNetwork` alone (no head
    FLOPs). ``size`` is the counting size (what ``INPUT.FIX_SIZE_FOR_FLOPS`` would say), e.g.
    (1024, 2048) for Cityscapes frames.

    Returns ``expected`` (every cell's operations and transitions; at 768 x 768 this is what
    ``MODEL.BUDGET.FLOPS_ALL`` normalises by), ``real`` (expected + gates + stem + head), and
    the parts ``gates``, ``stem`` and ``head``.
    """
    # a routed meta-architecture (panoptic, instance, classifier) finds its DynamicNetwork
    # itself (it may sit inside an FPN) and counts its own heads
    routed = getattr(model, "routed_network", None)
    backbone = routed if routed is not None else getattr(model, "backbone", model)
    _, head = model_head(model)
    if not isinstance(backbone, DynamicNetwork):
        raise TypeError(
            f"all_open_flops needs a DynamicNetwork or a model whose .backbone is one, got "
            f"{type(backbone).__name__}."
        )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"size={tuple(size)} must be (H, W) with positive sizes, e.g. (1024, 2048)."
        )
    size = (int(size[0]), int(size[1]))
    table, stem = backbone.flops_table(size)
    open_gates = {
        key: CellRouting(torch.ones(1, len(cost.paths)), dropped=False)
        for key, cost in table.items()
    }
    costs = backbone.routing_costs(size)
    expected, real = routing_flops(costs, open_gates, 1, torch.zeros(1))
    gates = costs.gates
    head_flops = 0.0
    if hasattr(model, "dense_head_mflops"):
        head_flops = float(model.dense_head_mflops(size))
    elif head is not None:
        head_flops = head.flops(size)
    return {
        "real": float(real[0]) + stem + head_flops,
        "expected": float(expected[0]),
        "gates": gates,
        "stem": stem,
        "head": head_flops,
    }
