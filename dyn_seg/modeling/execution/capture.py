"""One program per input shape: a graph plan's forward pass as tensors in, tensors out.

The graph plans (:class:`~.plans.GraphPlan`) decide every route on the device, so a whole
forward pass of an inference copy is one fixed program for a given input shape. To compile
it as one graph, capture it, replay it or export it, its outputs must be plain tensors:
:func:`flatten_record` lays the :class:`~.backbone.RoutingRecord` out as a few tensors
and :func:`unflatten_record` builds it back outside the program. :class:`CapturedForward`
captures the program as a CUDA graph per input shape on CUDA and replays it: no Python
runs per operator, the host issues one launch per forward pass.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch
from torch.utils._pytree import tree_map_only

from ..cost.flops import CellRouting
from ..cost.record import RoutingRecord

__all__ = ["CapturedForward", "flatten_record", "unflatten_record"]

Key = Tuple[int, int]


def _flag(value, like: torch.Tensor) -> torch.Tensor:
    """A presence flag as a 0-dim bool tensor (a fill kernel, no host-to-device copy)."""
    if isinstance(value, torch.Tensor):
        return value
    # ones / zeros rather than full(): jit tracing cannot record full() with a bool value
    return (torch.ones if value else torch.zeros)((), dtype=torch.bool, device=like.device)


def flatten_record(record: RoutingRecord, keys: Sequence[Key], feature_names: Sequence[str],
                   batch: int, widths: Sequence[int], like: torch.Tensor) -> Tuple:
    """``record`` as tensors: (alphas per cell in ``keys`` order (zeros where a cell
    received nothing), flags (K, 2) bool [dropped, present], expected (N,), real (N,),
    feature presence (F,) bool)."""
    alphas, flags = [], []
    for key, width in zip(keys, widths):
        cell = record.routing[key]
        a = cell.alpha
        if a is None:
            a = torch.zeros(batch, width, device=like.device)
        alphas.append(a)
        flags.append(torch.stack([_flag(cell.dropped, like), _flag(cell.present, like)]))
    present = torch.stack([_flag(record.feature_present[n], like) for n in feature_names])
    return (tuple(alphas), torch.stack(flags), record.expected_flops, record.real_flops,
            present)


def unflatten_record(flat: Tuple, keys: Sequence[Key], feature_names: Sequence[str],
                     stem_flops: float) -> RoutingRecord:
    """The :class:`RoutingRecord` of :func:`flatten_record`'s tensors (flags stay on the
    device; :attr:`RoutingRecord.cells` reads them back once)."""
    alphas, flags, expected, real, present = flat
    routing = {key: CellRouting(a, flags[k, 0], flags[k, 1])
               for k, (key, a) in enumerate(zip(keys, alphas))}
    feature_present = {n: present[j] for j, n in enumerate(feature_names)}
    return RoutingRecord(routing, expected, real, stem_flops, feature_present)


class CapturedForward:
    """``fn(x)`` (tensors in, tensors out), captured as a CUDA graph per input shape.

    With ``cuda_graph`` False, or for a tensor that is not on CUDA, it calls ``fn``. Else
    the first call with a new (shape, dtype, device, layout) runs ``fn`` twice on a side
    stream (warm-up: caches, lazy initialisation, autotuning) and captures a third run; each
    call copies ``x`` into the captured input and replays. Outputs are cloned out of the
    graph's memory (the next replay overwrites it).
    """

    def __init__(self, fn: Callable, cuda_graph: bool = False, warmup: int = 2):
        self.fn = fn
        self.cuda_graph = cuda_graph
        self.warmup = warmup
        self._graphs: Dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor):
        if not (self.cuda_graph and x.is_cuda):
            return self.fn(x)
        layout = torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else None
        key = (tuple(x.shape), x.dtype, x.device, layout)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return tree_map_only(torch.Tensor, torch.clone, static_out)

    @property
    def num_graphs(self) -> int:
        """Input shapes captured so far."""
        return len(self._graphs)

    def _capture(self, x: torch.Tensor) -> tuple:
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return static_in, graph, static_out
