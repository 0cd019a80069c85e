"""Cell outputs on the fast path: values for some images, a pending gate scale, or zero.

The faithful path multiplies every transition by its gate activation and hands the next
cell a full-batch tensor, zeros included. Here an output stays *symbolic* until the
single cell that reads it sums its inputs: ``values`` may cover only some images
(``rows``), the gate scale is applied during the sum (one fused multiply-add), and a
transition that every image closed is a zero signal with no tensor at all. A zero signal
is not "nothing": a cell whose inputs are all zero still runs (on zeros), exactly as on
the faithful path, whereas a cell whose inputs are all nothing (None) is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["RoutedSignal", "aggregate", "zeros"]

Scale = Union[None, float, torch.Tensor]


def zeros(shape: Tuple[int, ...], like: torch.Tensor, memory_format: torch.memory_format
          ) -> torch.Tensor:
    """A zero tensor of ``shape`` with ``like``'s dtype and device in ``memory_format``."""
    return torch.zeros(shape, dtype=like.dtype, device=like.device).contiguous(
        memory_format=memory_format
    )


@dataclass
class RoutedSignal:
    """One cell output (keep, up or down) for a batch of N images.

    The value for image ``rows[r]`` is ``scale[r] * values[r]``; images not in ``rows`` get
    zero. ``rows`` None means all N images in order; ``scale`` None means 1, a float is one
    scale for the whole batch, a tensor has shape (R, 1, 1, 1). ``values`` None is the zero
    signal. ``shape`` is the full (N, C, H, W) value; ``like`` gives dtype and device.

    Every output is read by exactly one cell, so the sum may reuse ``values`` in place.
    """

    values: Optional[torch.Tensor]
    rows: Optional[torch.Tensor]
    scale: Scale
    shape: Tuple[int, ...]
    like: torch.Tensor
    memory_format: torch.memory_format

    @classmethod
    def zero(cls, shape: Tuple[int, ...], like: torch.Tensor,
             memory_format: torch.memory_format) -> RoutedSignal:
        return cls(None, None, None, tuple(shape), like, memory_format)

    def _scaled_rows(self) -> torch.Tensor:
        if self.scale is None:
            return self.values
        return self.values * self.scale

    def add_to(self, out: Optional[torch.Tensor]) -> torch.Tensor:
        """``out + value`` (``out`` None: the value itself), reusing tensors in place."""
        if self.values is None:
            return out if out is not None else self.materialize()
        if out is None:
            if self.rows is None:
                return self.values if self.scale is None else self.values.mul_(self.scale)
            out = zeros(self.shape, self.like, self.memory_format)
        if self.rows is not None:
            return out.index_add_(0, self.rows, self._scaled_rows())
        if self.scale is None:
            return out.add_(self.values)
        if isinstance(self.scale, float):
            return out.add_(self.values, alpha=self.scale)
        return out.addcmul_(self.values, self.scale)

    def materialize(self) -> torch.Tensor:
        """The full (N, C, H, W) value as a tensor."""
        if self.values is None:
            return zeros(self.shape, self.like, self.memory_format)
        return self.add_to(None)


def aggregate(signals: Sequence[Optional[RoutedSignal]]) -> Optional[torch.Tensor]:
    """Sum of a cell's inputs in order; None when every input is nothing (the cell drops).

    Zero signals add nothing but make the sum present (zeros when all inputs are zero).
    """
    present = [s for s in signals if s is not None]
    if not present:
        return None
    out = None
    for s in present:
        if s.values is not None:
            out = s.add_to(out)
    return out if out is not None else present[0].materialize()
