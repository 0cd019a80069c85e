"""Forced gate patterns and norm calibration, to measure budget-model behaviour untrained.

A trained budget model closes paths; a randomly initialised one keeps almost all open.
:func:`apply_gate_pattern` makes every gate input-independent (last layer's weights 0) and
sets its bias to ``+bias`` (open, alpha = tanh(bias) ~ 1) or ``-bias`` (closed, alpha = 0)
per path, so the same routing can be measured on any hardware. :func:`random_gate_pattern`
picks closed cells or paths with a seeded RNG. :func:`calibrate_batch_norm` sets running
statistics from a few batches, as precise BN does after training, so that activations of
a random network have trained-like scales.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Tuple

import torch
from fvcore.nn.precise_bn import get_bn_modules
from torch import nn

from dyn_seg.engine.bn_stats import recompute_bn_stats
from dyn_seg.modeling.network.backbone import DynamicNetwork

__all__ = [
    "GATE_PATTERN_UNITS",
    "GatePattern",
    "apply_gate_pattern",
    "calibrate_batch_norm",
    "random_gate_pattern",
]

GATE_PATTERN_UNITS = ("path", "cell")
CellKey = Tuple[int, int]


@dataclass(frozen=True)
class GatePattern:
    """Closed paths per routed cell ``(layer, scale)``; every other path is open."""

    closed: Dict[CellKey, Tuple[str, ...]] = field(default_factory=dict)

    def num_closed(self) -> int:
        return sum(len(p) for p in self.closed.values())


def random_gate_pattern(network: DynamicNetwork, closed_fraction: float, unit: str = "path",
                        seed: int = 0) -> GatePattern:
    """Close ``closed_fraction`` of the routed cells' paths (``unit`` "path") or of the
    routed cells themselves (``unit`` "cell", every path of the cell), chosen with a
    seeded RNG. The init cell always stays open (closing it would drop the whole network).
    """
    if not 0.0 <= closed_fraction <= 1.0:
        raise ValueError(f"closed_fraction={closed_fraction} must be in [0, 1].")
    if unit not in GATE_PATTERN_UNITS:
        raise ValueError(f"unit={unit!r} is not allowed: use one of {GATE_PATTERN_UNITS}.")
    specs = [s for layer in network.cell_specs for s in layer]
    rng = random.Random(seed)
    if unit == "cell":
        chosen = rng.sample(specs, round(closed_fraction * len(specs)))
        return GatePattern({(s.layer, s.scale): tuple(s.paths) for s in chosen})
    items = [(s, p) for s in specs for p in s.paths]
    closed: Dict[CellKey, Tuple[str, ...]] = {}
    for s, p in rng.sample(items, round(closed_fraction * len(items))):
        key = (s.layer, s.scale)
        closed[key] = tuple(q for q in s.paths if q in closed.get(key, ()) + (p,))
    return GatePattern(closed)


@torch.no_grad()
def apply_gate_pattern(network: DynamicNetwork, pattern: GatePattern, bias: float = 8.0
                       ) -> None:
    """Make every gate of ``network`` input-independent: open paths at alpha = tanh(bias),
    closed paths (those in ``pattern``) at alpha = 0. Changes the weights in place.
    """
    if network.init_cell.gate is None:
        raise ValueError(
            "Gate patterns need gates: this network has MODEL.GATE.GATE_ON=False."
        )
    for cell in network.all_cells():
        spec = cell.spec
        closed = pattern.closed.get((spec.layer, spec.scale), ())
        cell.gate.proj.weight.zero_()
        values = [-bias if p in closed else bias for p in spec.paths]
        cell.gate.proj.bias.copy_(torch.tensor(values, dtype=cell.gate.proj.bias.dtype))


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, forward: Callable[[torch.Tensor], object],
                         batches: Iterable[torch.Tensor]) -> int:
    """Set every batch norm's running statistics to the average over ``batches``.

    ``forward`` runs the part of ``model`` that holds the norms on one batch (in training
    mode, so that norms see batch statistics). The pass is the precise-BN one,
    :func:`dyn_seg.engine.recompute_bn_stats` (drop path off, ``step_rate`` restored).
    Returns the number of norms calibrated; restores the modes and momenta afterwards.
    """
    batches = list(batches)
    was_training = model.training
    model.train()
    num_norms = len(get_bn_modules(model))  # the norms in training mode
    try:
        recompute_bn_stats(model, iter(batches), len(batches), forward=forward)
    finally:
        model.train(was_training)
    return num_norms
