"""A routing cell on the fast path: folded convolutions, host-planned skipping, sub-batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dyn_seg.modeling.cell import RoutingCell
from dyn_seg.modeling.flops import CellRouting, small_gate_size
from dyn_seg.modeling.gate import SoftGate
from dyn_seg.modeling.routing_space import DOWN, KEEP, UP

from .compile import compile_forward
from .folding import fold_conv, fold_sequence
from .options import FastOptions
from .plan import CellPlan, Rows
from .signals import RoutedSignal

__all__ = ["CellBody", "FastCell", "FastCellOutputs", "FastGate", "UpTransition"]


class FastGate(nn.Module):
    """:class:`SoftGate` with its first layer folded; returns float32 (N, num_paths)."""

    def __init__(self, gate: SoftGate, fold_bn: bool = True):
        super().__init__()
        self.small = gate.small
        self.reduce = fold_conv(gate.reduce, fold_bn)
        proj = gate.proj
        self.register_buffer("proj_weight", proj.weight.detach().flatten(1).float().clone())
        self.register_buffer("proj_bias", proj.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small:
            h, w = x.shape[-2:]
            if h >= 4 and w >= 4:
                x = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x, size=small_gate_size(h, w), mode="bilinear",
                                  align_corners=False)
        pooled = self.reduce(x).mean(dim=(2, 3), dtype=torch.float32)
        return F.relu(torch.tanh(F.linear(pooled, self.proj_weight, self.proj_bias)))


class CellBody(nn.Module):
    """ReLU of the sum of the cell's operations (identities add the input)."""

    def __init__(self, cell: RoutingCell, fold_bn: bool = True):
        super().__init__()
        convs = [op for op in cell.ops if not op.is_identity]
        self.ops = nn.ModuleList(fold_sequence(op.layers, fold_bn) for op in convs)
        self.identities = sum(op.is_identity for op in cell.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        for op in self.ops:
            y = op(x)
            h = y if h is None else h.add_(y)
        for _ in range(self.identities):
            if h is None:
                h = x
            elif h is x:  # never write into x: the keep output of shut images is x
                h = h + x
            else:
                h = h.add_(x)
        return F.relu(h) if h is x else F.relu_(h)


class UpTransition(nn.Module):
    """1x1 conv C -> C/2 (norm, ReLU), then bilinear x2."""

    def __init__(self, conv: nn.Module, fold_bn: bool = True):
        super().__init__()
        self.conv = fold_conv(conv, fold_bn)

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(act), scale_factor=2, mode="bilinear",
                             align_corners=False)


@dataclass
class FastCellOutputs:
    """A cell's outputs as routed signals (None: nothing) and its routing record."""

    keep: Optional[RoutedSignal]
    up: Optional[RoutedSignal]
    down: Optional[RoutedSignal]
    routing: CellRouting

    def get(self, path: str) -> Optional[RoutedSignal]:
        return {KEEP: self.keep, UP: self.up, DOWN: self.down}[path]


class FastCell(nn.Module):
    """Inference copy of a :class:`RoutingCell` (same weights, norms folded).

    The network first runs every gate of a layer (:attr:`gate`), brings the activations to
    the host once, plans each cell with :func:`plan_cell`, and then calls :meth:`forward`,
    which computes only what the plan asks for and leaves gate scales pending in the
    returned :class:`RoutedSignal`\\ s.
    """

    def __init__(self, cell: RoutingCell, fold_bn: bool = True,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.spec = cell.spec
        self.memory_format = memory_format
        self.paths = tuple(cell.spec.paths)
        self.gate = FastGate(cell.gate, fold_bn) if cell.gate is not None else None
        self.body = CellBody(cell, fold_bn)
        self.up = UpTransition(cell.up, fold_bn) if cell.up is not None else None
        self.down = fold_conv(cell.down, fold_bn) if cell.down is not None else None

    def compile_parts(self, options: FastOptions) -> None:
        """Compile the static modules (gate convolution, operations, transitions)."""
        for module in (self.gate.reduce if self.gate is not None else None, self.body,
                       self.up, self.down):
            if module is not None:
                compile_forward(module, options.compile, options.compile_mode)

    def forward(
        self,
        x: Optional[torch.Tensor],
        alpha: Optional[torch.Tensor],
        host_alpha: Optional[List[List[float]]],
        plan: Optional[CellPlan],
    ) -> FastCellOutputs:
        """Run the cell on its summed input ``x`` (N, C, H, W) (None: all inputs nothing).

        ``alpha``: (N, num_paths) gate activations on the device (None without gates);
        ``host_alpha``: the same as Python floats; ``plan``: what to compute.
        """
        if x is None:
            return FastCellOutputs(None, None, None, CellRouting(None, True))
        n = x.shape[0]
        record_alpha = alpha if alpha is not None else x.new_ones(n, len(self.paths),
                                                                  dtype=torch.float32)
        if plan.dropped:
            keep = RoutedSignal(x, None, None, tuple(x.shape), x, self.memory_format)
            return FastCellOutputs(keep, None, None, CellRouting(record_alpha, True))

        ops_rows = plan.ops_rows
        x_ops = x if ops_rows is None else x.index_select(0, _index(ops_rows, x))
        act = self.body(x_ops)
        outs = {}
        for path, module in ((UP, self.up), (DOWN, self.down)):
            if module is None:
                continue
            rows = plan.path_rows[path]
            if rows == []:
                outs[path] = RoutedSignal.zero(self._out_shape(path, x), x, self.memory_format)
                continue
            src = act if rows == ops_rows else act.index_select(0, _local(rows, ops_rows, x))
            outs[path] = self._signal(module(src), rows, alpha, host_alpha, path, x)
        keep = self._keep(x, act, alpha, host_alpha, plan)
        return FastCellOutputs(keep, outs.get(UP), outs.get(DOWN),
                               CellRouting(record_alpha, False))

    def _keep(self, x, act, alpha, host_alpha, plan: CellPlan) -> RoutedSignal:
        rows = plan.path_rows[KEEP]
        if rows == []:
            values = None
        else:
            values = act if rows == plan.ops_rows else act.index_select(
                0, _local(rows, plan.ops_rows, x))
        if not plan.shut_rows:
            if values is None:
                return RoutedSignal.zero(tuple(x.shape), x, self.memory_format)
            return self._signal(values, rows, alpha, host_alpha, KEEP, x)
        # some images keep their input: X for them, plus alpha * act where alpha is open
        shut = x.new_zeros(x.shape[0])
        shut[_index(plan.shut_rows, x)] = 1.0
        out = x * shut.view(-1, 1, 1, 1)
        if values is not None:
            out = self._signal(values, rows, alpha, host_alpha, KEEP, x).add_to(out)
        return RoutedSignal(out, None, None, tuple(x.shape), x, self.memory_format)

    def _signal(self, values, rows: Rows, alpha, host_alpha, path: str, x) -> RoutedSignal:
        n = x.shape[0]
        shape = (n,) + tuple(values.shape[1:])
        k = self.paths.index(path)
        if alpha is None:
            scale = None
        elif n == 1:
            scale = float(host_alpha[0][k])
            scale = None if scale == 1.0 else scale
        else:
            a = alpha[:, k] if rows is None else alpha[_index(rows, x), k]
            scale = a.to(values.dtype).view(-1, 1, 1, 1)
        index = None if rows is None else _index(rows, x)
        return RoutedSignal(values, index, scale, shape, x, self.memory_format)

    def _out_shape(self, path: str, x: torch.Tensor):
        n, c, h, w = x.shape
        if path == UP:
            return (n, c // 2, 2 * h, 2 * w)
        return (n, 2 * c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)


def _index(rows: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.long, device=like.device)


def _local(rows: Sequence[int], within: Rows, like: torch.Tensor) -> torch.Tensor:
    """Positions of batch indices ``rows`` inside the sub-batch ``within`` (None: all)."""
    if within is None:
        return _index(rows, like)
    where = {r: k for k, r in enumerate(within)}
    return _index([where[r] for r in rows], like)
