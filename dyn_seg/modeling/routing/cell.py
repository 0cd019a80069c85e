"""One routing cell: aggregate, gate, operate, and emit keep / up / down transitions.

The cell's rules live here once and every execution plan (:mod:`.plans`) uses them:
which images are *shut* (:func:`image_shut`), when a whole batch *drops* the cell at
inference (:func:`batch_drops`), what the operations and transitions compute
(:meth:`RoutingCell.body`, :meth:`RoutingCell.transition`) and the shapes of the
transition outputs (:func:`transition_shape`, :func:`transition_specs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .gate import SoftGate
from .layers import ConvSpec, build_conv
from .ops import CellOperation
from .space import DOWN, KEEP, UP, CellSpec

# A gate activation (or a sum of them) below this is "closed" (reference threshold). The
# one threshold of the method: dropping, shut images, real FLOPs and routing statistics.
GATE_EPS = 1e-4


# Whether something exists: known on the host (a Python bool) or decided on the device (a
# 0-dim bool tensor), so that no routing decision needs a host read inside a forward pass.
Presence = Union[bool, torch.Tensor]


def image_shut(alpha_sum):
    """True for an image whose activations sum (tensor or float) below ``GATE_EPS``: the
    cell is an identity for it (keep = X, up / down = 0)."""
    return alpha_sum < GATE_EPS


def batch_drops(alpha_total):
    """True when the activations of the whole batch (a float or a 0-dim tensor) sum below
    ``GATE_EPS``: at inference the cell is skipped (keep = X, up / down are nothing)."""
    return alpha_total < GATE_EPS


def any_present(flags: Sequence[Presence]) -> Presence:
    """Whether any of ``flags`` holds (Python bools stay on the host)."""
    if any(f is True for f in flags):
        return True
    tensors = [f for f in flags if f is not False]
    if not tensors:
        return False
    out = tensors[0]
    for f in tensors[1:]:
        out = out | f
    return out


def both(a: Presence, b: Presence) -> Presence:
    """``a and b`` for Python bools or 0-dim bool tensors."""
    if a is False or b is False:
        return False
    if a is True:
        return b
    if b is True:
        return a
    return a & b


def negate(a: Presence) -> Presence:
    return (not a) if isinstance(a, bool) else ~a


def where_present(flag: Presence, value: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``value`` where ``flag`` holds, else ``other`` (no operator for a host-side flag)."""
    if flag is True:
        return value
    if flag is False:
        return other
    return torch.where(flag, value, other)


def transition_specs(path: str, channels: int) -> List[ConvSpec]:
    """Convolutions of a transition (each starts with a ReLU on the cell's sum, counted apart)."""
    if path == KEEP:
        return []
    if path == UP:
        return [ConvSpec(channels, channels // 2, 1, norm=True, relu=True)]
    if path == DOWN:
        return [ConvSpec(channels, channels * 2, 1, stride=2, norm=True, relu=True)]
    raise ValueError(f"unknown path {path!r}")


def transition_shape(path: str, shape: Sequence[int]) -> Tuple[int, int, int, int]:
    """Output shape of transition ``path`` for a cell input of shape (N, C, H, W)."""
    n, c, h, w = shape
    if path == UP:
        return (n, c // 2, 2 * h, 2 * w)
    if path == DOWN:
        return (n, 2 * c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    return (n, c, h, w)


@dataclass
class CellOutputs:
    """A cell's outputs. A value of an output that is *nothing* (adds nothing to the next
    layer) is exactly zero, and its presence (:meth:`presence`) is False; ``None`` marks an
    output known on the host to be nothing.

    ``alpha`` is (N, num_paths) (None when the cell had no input); ``dropped``: the cell was
    skipped at inference; ``present``: the cell received something. Both are Python bools
    or 0-dim bool tensors (decided on the device).
    """

    keep: Optional[torch.Tensor]
    up: Optional[torch.Tensor]
    down: Optional[torch.Tensor]
    alpha: Optional[torch.Tensor]
    dropped: Presence
    present: Presence = True

    def get(self, path: str) -> Optional[torch.Tensor]:
        return {KEEP: self.keep, UP: self.up, DOWN: self.down}[path]

    def presence(self, path: str) -> Presence:
        """Whether output ``path`` is something: keep whenever the cell received input, up
        and down only when the cell was not dropped."""
        if self.get(path) is None:
            return False
        return self.present if path == KEEP else negate(self.dropped)


NOTHING = CellOutputs(None, None, None, None, dropped=True, present=False)


class RoutingCell(nn.Module):
    """A cell of the routing space (``spec`` says its scale and which outputs it makes).

    H = sum of the operations of ``cell_type`` on the aggregated input X;
    keep = ReLU(H); up = ReLU(H) -> 1x1 C->C/2 (norm, ReLU) -> bilinear x2;
    down = ReLU(H) -> 1x1 stride 2 C->2C (norm, ReLU). Each is scaled by its gate activation.
    An image whose activations sum to below 1e-4 passes X through unchanged (keep = X).

    ``forward`` is the faithful plan for one cell (every path for every image).
    """

    def __init__(
        self,
        spec: CellSpec,
        cell_type: Sequence[str],
        norm: str,
        gate_on: bool = True,
        gate_init_bias: float = 1.5,
        small_gate: bool = False,
        layer_rate: float = 0.0,
    ):
        super().__init__()
        self.spec = spec
        c = spec.channels
        self.ops = nn.ModuleList(CellOperation(name, c, norm) for name in cell_type)
        self.up = build_conv(transition_specs(UP, c)[0], norm) if UP in spec.paths else None
        self.down = build_conv(transition_specs(DOWN, c)[0], norm) if DOWN in spec.paths else None
        self.gate = (
            SoftGate(c, spec.num_paths, norm, gate_init_bias, small_gate) if gate_on else None
        )
        # share of DROP_PROB applied here at the end of training: (l + 1) / L
        self.layer_rate = layer_rate

    def forward(
        self, x: Optional[torch.Tensor], drop_prob: float = 0.0, step_rate: float = 0.0,
        present: Presence = True,
    ) -> CellOutputs:
        """``x``: the summed inputs (N, C, H, W), or None when every input was nothing;
        ``present``: whether any input was something (a device flag at inference, where an
        absent input is exactly zero). Every decision stays on the device."""
        if x is None or present is False:
            return NOTHING
        alpha = self.activations(x)
        dropped = self.drops(alpha, present)
        act = self.body(x, drop_prob, step_rate)
        keep = self.keep_output(x, alpha, act, dropped)
        up = self.path_output(UP, alpha, act, dropped) if self.up is not None else None
        down = self.path_output(DOWN, alpha, act, dropped) if self.down is not None else None
        return CellOutputs(keep, up, down, alpha, dropped, present)

    def drops(self, alpha: torch.Tensor, present: Presence) -> Presence:
        """Whether the cell is skipped: at inference when the batch's activations sum below
        ``GATE_EPS`` or the cell received nothing (a device flag); never in training."""
        if self.training:
            return False
        if self.gate is None:
            return negate(present)
        return any_present([negate(present), batch_drops(alpha.detach().sum())])

    def keep_output(self, x: torch.Tensor, alpha: torch.Tensor, act: torch.Tensor,
                    dropped: Presence) -> torch.Tensor:
        """keep = [image shut] * X + alpha_keep * ReLU(H); X itself where the cell drops."""
        shut = image_shut(alpha.sum(dim=1)).to(x.dtype).view(-1, 1, 1, 1)
        keep = shut * x + self.scale(alpha, KEEP, act.dtype) * act
        return where_present(dropped, x, keep)

    def path_output(self, path: str, alpha: torch.Tensor, act: torch.Tensor,
                    dropped: Presence) -> torch.Tensor:
        """alpha_path * transition(ReLU(H)); exactly zero where the cell drops."""
        out = self.scale(alpha, path, act.dtype) * self.transition(path, act)
        if dropped is False:
            return out
        if dropped is True:
            return torch.zeros_like(out)
        return torch.where(dropped, 0.0, out)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Gate activations (N, num_paths) in float32; ones without a gate (Network-Fix)."""
        if self.gate is None:
            return torch.ones(x.shape[0], self.spec.num_paths, device=x.device)
        return self.gate(x)

    def scale(self, alpha: torch.Tensor, path: str, dtype: Optional[torch.dtype] = None
              ) -> torch.Tensor:
        """The activations of ``path`` as an (N, 1, 1, 1) factor, in ``dtype`` (the
        activations' dtype: under autocast float32 gates would promote every product)."""
        a = alpha[:, self.spec.paths.index(path)].view(-1, 1, 1, 1)
        return a if dtype is None else a.to(dtype)

    def body(self, x: torch.Tensor, drop_prob: float = 0.0, step_rate: float = 0.0
             ) -> torch.Tensor:
        """ReLU(H), H = the sum of the operations on ``x`` (scheduled drop path in training).

        Without autograd the sum and the ReLU reuse fresh tensors in place (never ``x``).
        """
        keep_prob = 1.0 - step_rate * self.layer_rate * drop_prob
        inplace = not torch.is_grad_enabled()
        out = None
        for op in self.ops:
            y = op(x)
            if self.training and not op.is_identity and keep_prob < 1.0:
                # scheduled drop path: per-image Bernoulli mask, rescaled by keep_prob
                mask = torch.bernoulli(x.new_full((x.shape[0], 1, 1, 1), keep_prob))
                y = y * mask / keep_prob
            if out is None:
                out = y
            elif inplace and out is not x:
                out = out.add_(y)
            else:
                out = out + y
        return F.relu_(out) if inplace and out is not x else F.relu(out)

    def transition(self, path: str, act: torch.Tensor) -> torch.Tensor:
        """The unscaled transition ``path`` of ``act`` = ReLU(H) (keep: ``act`` itself)."""
        if path == UP:
            return F.interpolate(self.up(act), scale_factor=2, mode="bilinear",
                                 align_corners=False)
        if path == DOWN:
            return self.down(act)
        return act
