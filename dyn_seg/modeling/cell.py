"""One routing cell: aggregate, gate, operate, and emit keep / up / down transitions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .flops import GATE_EPS, transition_specs
from .gate import SoftGate
from .layers import build_conv
from .ops import CellOperation
from .routing_space import DOWN, KEEP, UP, CellSpec


@dataclass
class CellOutputs:
    """A cell's outputs; ``None`` means "nothing" (adds nothing to the next layer).

    ``alpha`` is (N, num_paths) or None when the cell had no input; ``dropped`` is True
    when the cell was skipped at inference.
    """

    keep: Optional[torch.Tensor]
    up: Optional[torch.Tensor]
    down: Optional[torch.Tensor]
    alpha: Optional[torch.Tensor]
    dropped: bool

    def get(self, path: str) -> Optional[torch.Tensor]:
        return {KEEP: self.keep, UP: self.up, DOWN: self.down}[path]


class RoutingCell(nn.Module):
    """A cell of the routing space (``spec`` says its scale and which outputs it makes).

    H = sum of the operations of ``cell_type`` on the aggregated input X;
    keep = ReLU(H); up = ReLU(H) -> 1x1 C->C/2 (norm, ReLU) -> bilinear x2;
    down = ReLU(H) -> 1x1 stride 2 C->2C (norm, ReLU). Each is scaled by its gate activation.
    An image whose activations sum to below 1e-4 passes X through unchanged (keep = X).
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
        self, x: Optional[torch.Tensor], drop_prob: float = 0.0, step_rate: float = 0.0
    ) -> CellOutputs:
        """``x``: the summed inputs (N, C, H, W), or None when every input was nothing."""
        if x is None:
            return CellOutputs(None, None, None, None, dropped=True)
        n = x.shape[0]
        if self.gate is not None:
            alpha = self.gate(x)
            # whole-batch skipping at inference (one host sync, as the reference)
            if not self.training and float(alpha.sum()) < GATE_EPS:
                return CellOutputs(x, None, None, alpha, dropped=True)
        else:
            alpha = x.new_ones(n, self.spec.num_paths)

        h = self._operations(x, drop_prob, step_rate)
        act = F.relu(h)
        shut = (alpha.sum(dim=1) < GATE_EPS).to(x.dtype).view(n, 1, 1, 1)
        keep = shut * x + self._scale(alpha, KEEP) * act
        up = down = None
        if self.up is not None:
            up = F.interpolate(self.up(act), scale_factor=2, mode="bilinear", align_corners=False)
            up = self._scale(alpha, UP) * up
        if self.down is not None:
            down = self._scale(alpha, DOWN) * self.down(act)
        return CellOutputs(keep, up, down, alpha, dropped=False)

    def _scale(self, alpha: torch.Tensor, path: str) -> torch.Tensor:
        a = alpha[:, self.spec.paths.index(path)]
        return a.view(-1, 1, 1, 1)

    def _operations(self, x: torch.Tensor, drop_prob: float, step_rate: float) -> torch.Tensor:
        keep_prob = 1.0 - step_rate * self.layer_rate * drop_prob
        out = None
        for op in self.ops:
            y = op(x)
            if self.training and not op.is_identity and keep_prob < 1.0:
                # scheduled drop path: per-image Bernoulli mask, rescaled by keep_prob
                mask = torch.bernoulli(x.new_full((x.shape[0], 1, 1, 1), keep_prob))
                y = y * mask / keep_prob
            out = y if out is None else out + y
        return out
