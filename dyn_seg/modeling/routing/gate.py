"""The soft conditional gate: per image and path, alpha = max(0, tanh(.))."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvSpec, build_conv


def gate_specs(channels: int) -> ConvSpec:
    """The gate's first layer: 1x1 conv C -> C/2 with norm and ReLU."""
    return ConvSpec(channels, channels // 2, 1, norm=True, relu=True)


def small_gate_size(h: int, w: int) -> Tuple[int, int]:
    """Input size of a small gate (a quarter per side, at least one pixel)."""
    return max(1, h // 4), max(1, w // 4)


class SoftGate(nn.Module):
    """1x1 conv C->C/2 (norm, ReLU) -> global average pool -> 1x1 conv C/2->paths (bias).

    Returns float32 activations of shape (N, num_paths) in [0, 1); a path whose activation
    is 0 is closed. With ``small`` the gate looks at the input bilinearly resized to a
    quarter per side. The last convolution's bias starts at ``init_bias`` so that every path
    starts open.
    """

    def __init__(self, channels: int, num_paths: int, norm: str, init_bias: float = 1.5,
                 small: bool = False):
        super().__init__()
        self.small = small
        self.reduce = build_conv(gate_specs(channels), norm)
        self.proj = nn.Conv2d(channels // 2, num_paths, kernel_size=1, bias=True)
        self.init_bias = init_bias
        # False: the reference's computation (average pool, 1x1 convolution). Inference
        # copies switch it on (:meth:`_fast_tail`).
        self.fast_proj = False

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
        # The activations decide the routing and the expected FLOPs (budget loss): pooling
        # and the last layer run in float32 even under autocast.
        if self.fast_proj:
            return self._fast_tail(self.reduce(x))
        reduced = self.reduce(x)
        if reduced.dtype == torch.float32:
            pooled = F.adaptive_avg_pool2d(reduced, 1)  # the reference's pooling, bit for bit
        else:  # autocast: accumulate in float32 without a float32 copy of the whole map
            pooled = reduced.mean(dim=(2, 3), keepdim=True, dtype=torch.float32)
        with torch.autocast(pooled.device.type, enabled=False):
            return F.relu(torch.tanh(self.proj(pooled))).flatten(1)

    def _fast_tail(self, reduced: torch.Tensor) -> torch.Tensor:
        """Pooling and ``proj`` as a float32 mean and the equal linear map (a conv2d call on
        a 1x1 map costs several times more on CPU). Another summation order than the
        faithful pooling + 1x1 convolution: for inference copies only, since a routing
        threshold turns a last-bit difference into another route."""
        pooled = reduced.mean(dim=(2, 3), dtype=torch.float32)
        weight, bias = self.proj.weight.flatten(1).float(), self.proj.bias.float()
        # entered only when autocast is on: the context costs more than the linear map
        if _autocast_enabled(pooled.device.type):
            with torch.autocast(pooled.device.type, enabled=False):
                return F.relu(torch.tanh(F.linear(pooled, weight, bias)))
        return F.relu(torch.tanh(F.linear(pooled, weight, bias)))


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch >= 2.4 takes the device type)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: one query per device kind
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()
