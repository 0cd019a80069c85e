"""Routing statistics, the one definition used by training logs, evaluation, the routing
visualiser and the analysis tool.

A path is *open* for an image when its gate activation exceeds ``GATE_EPS`` (the cell's
threshold, :mod:`.cell`); an image is *shut* in a cell when its activations sum below it.
Rates count the routed cells only (the init cell, layer -1, is left out).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from ..routing.cell import GATE_EPS, image_shut

__all__ = ["GATE_EPS", "image_shut", "open_path_counts", "open_rates", "path_open"]

CellKey = Tuple[int, int]


def path_open(alpha: torch.Tensor) -> torch.Tensor:
    """Which activations (any shape) count as an open path."""
    return alpha > GATE_EPS


def open_path_counts(alphas: Mapping[CellKey, Optional[torch.Tensor]]
                     ) -> Dict[int, Tuple[int, int]]:
    """Per routed layer: (open paths, paths) over the cells and images of ``alphas``.

    ``alphas``: ``{(layer, scale): activations}`` of shape (N, paths) or (paths,); None
    (a cell that received nothing) counts nothing. One host transfer for all layers.
    """
    layers: Dict[int, list] = {}
    for (layer, _), a in alphas.items():
        if layer >= 0 and a is not None:
            layers.setdefault(int(layer), []).append(a.detach().flatten())
    if not layers:
        return {}
    opened = torch.stack([path_open(torch.cat(v)).sum() for v in layers.values()]).tolist()
    return {l: (int(o), sum(t.numel() for t in v))
            for (l, v), o in zip(layers.items(), opened)}


def open_rates(counts: Mapping[int, Tuple[int, int]]) -> Tuple[float, Dict[int, float]]:
    """(overall share of open paths, {layer: share}) from :func:`open_path_counts`."""
    opened = sum(o for o, _ in counts.values())
    total = sum(t for _, t in counts.values())
    overall = opened / total if total else 0.0
    return overall, {l: o / t for l, (o, t) in sorted(counts.items()) if t}
