"""Which images of a batch need what in one cell, decided from the gate activations.

Pure functions of host-side numbers (no tensors), so the rules can be tested directly.
They reproduce the faithful cell exactly:

* the cell drops (keep = X, no up / down) when the activations of the whole batch sum to
  less than ``GATE_EPS``;
* an image whose activations sum to less than ``GATE_EPS`` keeps its input X ("shut");
* every other value is ``alpha * transition``, so an image needs the operations only if
  one of its activations is above 0, and a transition only if its own activation is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from dyn_seg.modeling.flops import GATE_EPS

__all__ = ["CellPlan", "plan_cell"]

Rows = Optional[List[int]]  # batch indices; None = every image of the batch


@dataclass(frozen=True)
class CellPlan:
    """What one cell computes for a batch.

    ``dropped``: skip the cell (keep = X, up / down nothing). ``ops_rows``: images whose
    operations run. ``path_rows[path]``: images whose transition ``path`` is computed
    (``[]``: nobody, a zero output). ``shut_rows``: images whose keep output starts from X.
    """

    dropped: bool
    ops_rows: Rows
    path_rows: Dict[str, Rows]
    shut_rows: List[int]


def _as_rows(rows: List[int], batch: int) -> Rows:
    return None if len(rows) == batch else rows


def plan_cell(
    alpha: Optional[Sequence[Sequence[float]]],
    paths: Sequence[str],
    batch: int,
    skip_closed_paths: bool = True,
    per_image_routing: bool = True,
) -> CellPlan:
    """Plan a cell from its activations ``alpha[i][p]`` (None: no gate, everything open).

    ``skip_closed_paths`` False computes every path for every image (as the faithful path);
    ``per_image_routing`` False skips a path only when every image closed it.
    """
    if alpha is None:
        return CellPlan(False, None, {p: None for p in paths}, [])
    sums = [sum(a) for a in alpha]
    if sum(sums) < GATE_EPS:
        return CellPlan(True, [], {p: [] for p in paths}, list(range(batch)))
    shut = [i for i, s in enumerate(sums) if s < GATE_EPS]
    if not skip_closed_paths:
        return CellPlan(False, None, {p: None for p in paths}, shut)
    everyone = list(range(batch))
    ops = [i for i in everyone if any(v > 0.0 for v in alpha[i])]
    if not per_image_routing:
        ops = everyone  # the batch is not split: whoever needs the operations runs them all
    path_rows: Dict[str, Rows] = {}
    for k, p in enumerate(paths):
        open_rows = [i for i in everyone if alpha[i][k] > 0.0]
        if open_rows and not per_image_routing:
            open_rows = everyone
        path_rows[p] = _as_rows(open_rows, batch)
    return CellPlan(False, _as_rows(ops, batch), path_rows, shut)
