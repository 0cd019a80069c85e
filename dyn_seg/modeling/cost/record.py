"""The routing record of a forward pass: per cell gate activations and flags, FLOPs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..routing.cell import Presence
from .flops import CellRouting

__all__ = ["RoutingRecord", "RoutingRecorder"]


@dataclass
class RoutingRecord:
    """What the routing did for a batch.

    ``routing``: per cell ``(layer, scale)`` (layer -1 = init cell) its gate activations and
    flags as the plan left them (device tensors for plans that decide on the device);
    :attr:`cells` is the host-side view. ``expected_flops`` / ``real_flops``: (N,) MFLOPs of
    the routed cells per image (expected is differentiable through the gates), computed on
    the device; ``stem_flops``: MFLOPs of the stem (counted in real FLOPs only).
    ``feature_present``: per output feature whether its cell received anything (a feature
    that did not is zeros).
    """

    routing: Dict[Tuple[int, int], CellRouting]
    expected_flops: torch.Tensor
    real_flops: torch.Tensor
    stem_flops: float
    feature_present: Dict[str, Presence] = field(default_factory=dict)
    _cells: Optional[Dict[Tuple[int, int], CellRouting]] = field(default=None, repr=False)

    @property
    def cells(self) -> Dict[Tuple[int, int], CellRouting]:
        """Per cell: activations (None where the cell received nothing) and whether it was
        dropped, as host-side bools: read back once, after the forward pass."""
        if self._cells is None:
            flags = [f for c in self.routing.values() if c.on_device
                     for f in (c.dropped, c.present) if isinstance(f, torch.Tensor)]
            values = iter(torch.stack(flags).tolist()) if flags else iter(())
            cells = {}
            for key, c in self.routing.items():
                if not c.on_device:
                    cells[key] = c
                    continue
                dropped = c.dropped if isinstance(c.dropped, bool) else next(values)
                present = c.present if isinstance(c.present, bool) else next(values)
                cells[key] = c.host(dropped, present)
            self._cells = cells
        return self._cells

    @property
    def backbone_flops(self) -> torch.Tensor:
        """(N,) real MFLOPs of the whole routed network per image: stem + cells."""
        return self.real_flops.detach() + self.stem_flops


class RoutingRecorder:
    """The explicit channel from a :class:`DynamicNetwork`'s ``forward`` to whoever called
    the model around it (a meta-architecture whose detectron2 code calls
    ``self.backbone(images)``): every ``forward`` inside :meth:`DynamicNetwork.recording`
    appends its :class:`RoutingRecord` and input shape here."""

    def __init__(self):
        self.calls: List[Tuple[RoutingRecord, Tuple[int, ...]]] = []

    def append(self, record: RoutingRecord, shape: Tuple[int, ...]) -> None:
        self.calls.append((record, tuple(shape)))

    def single(self, caller: str) -> Tuple[RoutingRecord, Tuple[int, ...]]:
        """The one ``(record, input shape)`` recorded; an error naming ``caller`` otherwise."""
        if len(self.calls) != 1:
            raise RuntimeError(
                f"{caller} ran its routed backbone {len(self.calls)} times in one forward; "
                "a routed model's forward runs it exactly once."
            )
        return self.calls[0]
