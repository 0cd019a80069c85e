"""The soft conditional gate: per image and path, alpha = max(0, tanh(.))."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .flops import gate_specs, small_gate_size
from .layers import build_conv


class SoftGate(nn.Module):
    """1x1 conv C->C/2 (norm, ReLU) -> global average pool -> 1x1 conv C/2->paths (bias).

    Returns activations of shape (N, num_paths) in [0, 1); a path whose activation is 0
    is closed. With ``small`` the gate looks at the input bilinearly resized to a quarter per
    side. The last convolution's bias starts at ``init_bias`` so that every path starts open.
    """

    def __init__(self, channels: int, num_paths: int, norm: str, init_bias: float = 1.5,
                 small: bool = False):
        super().__init__()
        self.small = small
        self.reduce = build_conv(gate_specs(channels), norm)
        self.proj = nn.Conv2d(channels // 2, num_paths, kernel_size=1, bias=True)
        self.init_bias = init_bias

    def reset_bias(self) -> None:
        nn.init.constant_(self.proj.bias, self.init_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small:
            h, w = x.shape[-2:]
            if h >= 4 and w >= 4:
                x = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
            else:  # the plain quarter-scale resize would be empty on a tiny map
                x = F.interpolate(x, size=small_gate_size(h, w), mode="bilinear",
                                  align_corners=False)
        x = F.adaptive_avg_pool2d(self.reduce(x), 1)
        # The activations decide the routing and the expected FLOPs (budget loss): the last
        # layer runs in float32 even under bf16 autocast (without autocast: unchanged).
        with torch.autocast(x.device.type, enabled=False):
            return F.relu(torch.tanh(self.proj(x.float()))).flatten(1)
