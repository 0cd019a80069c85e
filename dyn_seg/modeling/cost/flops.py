"""Analytic FLOPs, with the reference implementation's counting rules.

Units are million multiply-adds (MFLOPs) for one image. Rules (PAPER.md section 4):

* convolution: ``k*k*Cin/groups * Cout * Hout * Wout``; biases are not counted (the
  reference counts neither the gates' last convolution's nor the predictor's);
* norm: ``H*W*C``, counted twice when the norm's name contains "Sync" (the reference calls
  those "affine");
* ReLU: ``H*W*C``; global pooling: ``H*W*C``; identity and upsampling: 0;
* spatial sizes halve with integer division per stride 2 (also for the stem's padding-0
  convolution: 1024 x 2048 counts as 512 x 1024 after it, not 511 x 1023);
* the decoder is counted on a square map of side ``H // stride`` (:func:`decoder_map_size`).

Everything here is a pure function of layer specs and sizes; the per-image expected / real
FLOPs of a forward pass combine the static table with the gates' activations
(:func:`routing_flops`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from ..routing.cell import GATE_EPS, transition_specs
from ..routing.gate import gate_specs, small_gate_size
from ..routing.layers import ConvSpec
from ..routing.space import CellSpec

MEGA = 1e6


def norm_factor(norm: str) -> int:
    """Norm layers count once, or twice when their name contains "Sync" (reference rule)."""
    return 2 if norm and "Sync" in norm else 1


def conv_flops(spec: ConvSpec, h: int, w: int, norm: str) -> Tuple[float, int, int]:
    """FLOPs of ``spec`` (with its norm and ReLU) on an ``h`` x ``w`` input; output size."""
    ho, wo = h // spec.stride, w // spec.stride
    per_out = spec.kernel * spec.kernel * spec.in_channels // spec.groups
    flops = float(per_out * spec.out_channels * ho * wo)
    if spec.norm:
        flops += norm_factor(norm) * ho * wo * spec.out_channels
    if spec.relu:
        flops += ho * wo * spec.out_channels
    return flops, ho, wo


def sequence_flops(specs: Sequence[ConvSpec], h: int, w: int, norm: str) -> Tuple[float, int, int]:
    total = 0.0
    for spec in specs:
        flops, h, w = conv_flops(spec, h, w, norm)
        total += flops
    return total, h, w


def scale_size(size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """Spatial size at ``stride`` by integer halving of the counting size."""
    return size[0] // stride, size[1] // stride


def decoder_map_size(size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """Map size at which a decoder layer at ``stride`` is counted (reference rule).

    The reference counts its decoder on a square map of side ``H // stride`` (the counting
    height stands for both sides) rather than on the ``H // stride`` x ``W // stride`` map it
    computes: on 1:2 frames such as Cityscapes' 1024 x 2048 that is half of the decoder's
    multiply-adds. The recorded reference values (64 x 128 and 1024 x 2048) fix this rule.
    """
    side = size[0] // stride
    return side, side


@dataclass(frozen=True)
class CellFlops:
    """Static FLOPs (MFLOPs) of one cell at one counting size."""

    ops: float
    gate: float
    paths: Dict[str, float] = field(default_factory=dict)  # outgoing transitions


def gate_flops(channels: int, num_paths: int, h: int, w: int, norm: str, small: bool) -> float:
    if small:
        h, w = small_gate_size(h, w)
    flops, ho, wo = conv_flops(gate_specs(channels), h, w, norm)
    flops += ho * wo * (channels // 2)  # global average pool
    flops += (channels // 2) * num_paths  # last 1x1 conv at 1x1 (bias not counted)
    return flops


def cell_flops(
    spec: CellSpec,
    op_specs: Sequence[Sequence[ConvSpec]],
    size: Tuple[int, int],
    norm: str,
    gate_on: bool,
    small_gate: bool,
) -> CellFlops:
    """FLOPs of one cell at counting size ``size`` (the network input's H, W)."""
    h, w = scale_size(size, spec.stride)
    c = spec.channels
    ops = sum(sequence_flops(s, h, w, norm)[0] for s in op_specs)
    gate = gate_flops(c, spec.num_paths, h, w, norm, small_gate) if gate_on else 0.0
    relu = float(h * w * c)  # every transition starts with a ReLU of the cell's sum
    paths = {p: relu + sequence_flops(transition_specs(p, c), h, w, norm)[0] for p in spec.paths}
    return CellFlops(ops / MEGA, gate / MEGA, {p: f / MEGA for p, f in paths.items()})


@dataclass
class CellRouting:
    """What one cell did in a forward pass.

    ``alpha``: (N, num_paths) gate activations in [0, 1) (ones without gates), or None when
    the cell had no input and computed nothing. ``dropped``: the cell was skipped (eval:
    all inputs nothing, or every activation of the batch closed). ``present``: the cell
    received input. ``dropped`` and ``present`` are Python bools, or 0-dim bool tensors
    where the plan decided on the device (then ``alpha`` is a tensor whatever ``present``
    says, and counts only where it holds); :meth:`host` gives the host-side view.
    """

    alpha: Optional[torch.Tensor]
    dropped: Union[bool, torch.Tensor]
    present: Union[bool, torch.Tensor] = True

    @property
    def on_device(self) -> bool:
        return isinstance(self.dropped, torch.Tensor) or isinstance(self.present, torch.Tensor)

    def host(self, dropped: bool, present: bool) -> CellRouting:
        """The host-side view for read-back flags: alpha None where the cell got nothing."""
        return CellRouting(self.alpha if present else None, bool(dropped), True)


@dataclass(frozen=True)
class RoutingCosts:
    """The static part of :func:`routing_flops`, laid out for a few matrix products.

    Every cell of ``keys`` (the init cell first, then the routed cells layer by layer) owns
    ``widths[k]`` consecutive columns of the gate-activation matrix, in gate-channel order;
    ``edge_costs`` holds per column the MFLOPs of that transition where a routed cell reads
    it (0 otherwise); ``ops`` the cell's operation MFLOPs (0 for the init cell, whose own
    FLOPs are not counted); ``gates`` the MFLOPs of all routed cells' gates, which real
    FLOPs always include. Built by :func:`routing_costs`.
    """

    keys: Tuple[Tuple[int, int], ...]
    widths: Tuple[int, ...]
    edge_costs: Tuple[float, ...]
    ops: Tuple[float, ...]
    gates: float
    _device_cache: Dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_width(self) -> int:
        """Columns per cell in the per-cell layout of :meth:`tensors`."""
        return max(self.widths)

    def tensors(self, device: torch.device, counted: Tuple[bool, ...]):
        """(edge costs (T,), positions of the columns in a (K, max width) layout (T,),
        ops (K,) zeroed where ``counted`` is False) on ``device``, cached: the forward pass
        then copies nothing to the device while its pattern of counted cells repeats."""
        key = (str(device), counted)
        if key not in self._device_cache:
            if len(self._device_cache) > 256:  # training's random drops make many patterns
                self._device_cache.clear()
            pos = [k * self.max_width + j for k, w in enumerate(self.widths) for j in range(w)]
            ops = [c if on else 0.0 for c, on in zip(self.ops, counted)]
            self._device_cache[key] = (
                torch.tensor(self.edge_costs, dtype=torch.float32, device=device),
                torch.tensor(pos, dtype=torch.long, device=device),
                torch.tensor(ops, dtype=torch.float32, device=device),
            )
        return self._device_cache[key]


def routing_costs(
    specs: Sequence[Sequence[CellSpec]],
    table: Dict[Tuple[int, int], CellFlops],
    init_key: Tuple[int, int],
) -> RoutingCosts:
    """:class:`RoutingCosts` of the routed cells ``specs`` with the static ``table``."""
    routed = [s for layer in specs for s in layer]
    keys = [init_key] + [(s.layer, s.scale) for s in routed]
    read: Dict[Tuple[int, int], set] = {k: set() for k in keys}
    for spec in routed:
        for inp in spec.inputs:
            read[(inp.layer, inp.scale)].add(inp.path)
    edge_costs, widths = [], []
    for key in keys:
        paths = table[key].paths  # in gate-channel order
        widths.append(len(paths))
        edge_costs += [cost if path in read[key] else 0.0 for path, cost in paths.items()]
    ops = [0.0] + [table[(s.layer, s.scale)].ops for s in routed]
    gates = sum(table[(s.layer, s.scale)].gate for s in routed)
    return RoutingCosts(tuple(keys), tuple(widths), tuple(edge_costs), tuple(ops), gates)


def routing_flops(
    costs: RoutingCosts,
    routing: Dict[Tuple[int, int], CellRouting],
    batch_size: int,
    reference: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image expected and real cell FLOPs (MFLOPs, shape (N,)).

    For each routed cell: expected = max(alpha) * ops + sum of (alpha * transition) over its
    inputs; real = [sum(alpha) > eps] * ops + sum of [alpha > eps] * transition over its
    inputs + gate. A dropped cell contributes only its inputs (and its gate to real FLOPs);
    a cell that received no input at all (alpha None) still adds its gate to real FLOPs,
    although that gate never ran (reference rule, PAPER.md section 4). ``routing`` holds
    layer -1 (the init cell) as well, whose own FLOPs are not counted. Expected FLOPs are
    differentiable through alpha.

    Computed with a handful of tensor operations for the whole network (one per cell and
    input would be ~1,500 tiny kernels per forward pass, milliseconds of pure overhead):
    the activations of all cells side by side (zeros for a cell that received nothing),
    times the transitions' costs; per cell the maximum and the sum of its activations,
    times its operations' cost where it ran.
    """
    device = reference.device
    alphas, counted, live = [], [], []
    for key, width in zip(costs.keys, costs.widths):
        cell = routing[key]
        if cell.alpha is None:
            alphas.append(torch.zeros(batch_size, width, device=device))
            counted.append(False)
        elif cell.on_device:  # flags decided on the device: masks instead of host bools
            present = cell.present
            a = cell.alpha.float()
            alphas.append(a if present is True else torch.where(present, a, 0.0))
            counted.append(True)
            live.append((len(counted) - 1, cell))
        else:
            alphas.append(cell.alpha.float())
            counted.append(not cell.dropped)
    edge_costs, positions, ops = costs.tensors(device, tuple(counted))
    if live:
        ops = ops * _ops_mask(costs, live, device)
    a = torch.cat(alphas, dim=1)  # (N, T)
    expected = a @ edge_costs
    real = (a > GATE_EPS).float() @ edge_costs + costs.gates
    # activations are >= 0: zero padding changes neither a cell's maximum nor its sum
    cells, width = len(costs.keys), costs.max_width
    per_cell = a.new_zeros(batch_size, cells * width).index_copy(1, positions, a)
    per_cell = per_cell.view(batch_size, cells, width)
    expected = expected + per_cell.max(dim=2).values @ ops  # one maximum gets the gradient
    real = real + (per_cell.sum(dim=2) > GATE_EPS).float() @ ops
    return expected, real


def _ops_mask(costs: RoutingCosts, live, device: torch.device) -> torch.Tensor:
    """(K,) 1.0 where a cell's operations count (not dropped), for the cells whose flags are
    device tensors (``live``: (position, CellRouting)); 1.0 elsewhere. No host-to-device
    copy once the positions are cached (a CUDA graph can capture it)."""
    flags = []
    for _, cell in live:
        d = cell.dropped
        flags.append(d if isinstance(d, torch.Tensor)
                     else torch.full((), d, dtype=torch.bool, device=device))
    key = ("live", str(device), tuple(k for k, _ in live))
    if key not in costs._device_cache:
        costs._device_cache[key] = torch.tensor(key[2], dtype=torch.long, device=device)
    mask = torch.ones(len(costs.keys), device=device)
    return mask.index_copy(0, costs._device_cache[key], (~torch.stack(flags)).float())


def stem_flops(stem_specs: Sequence[Sequence[ConvSpec]], size: Tuple[int, int], norm: str) -> float:
    h, w = size
    total = 0.0
    for block in stem_specs:
        flops, h, w = sequence_flops(block, h, w, norm)
        total += flops
    return total / MEGA
