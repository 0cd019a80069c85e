"""Layer shapes as data: one description builds the module and counts its FLOPs.

Every convolution of the network (stem, cell operations, transitions, gate, decoder) is
described by a :class:`ConvSpec`. :func:`build_conv` turns a spec into a detectron2
``Conv2d`` (with its norm and ReLU), and :mod:`dyn_seg.modeling.cost.flops` counts the same spec,
so that the modules and the FLOPs accounting cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """A convolution, optionally followed by a norm layer and a ReLU.

    ``padding`` None means ``dilation * (kernel - 1) // 2`` ("same" for stride 1).
    """

    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: Optional[int] = None
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    norm: bool = False
    relu: bool = False

    @property
    def pad(self) -> int:
        if self.padding is not None:
            return self.padding
        return self.dilation * (self.kernel - 1) // 2


def depthwise(channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> ConvSpec:
    """A depthwise ``kernel`` x ``kernel`` convolution (no norm, no activation)."""
    return ConvSpec(channels, channels, kernel, stride, dilation=dilation, groups=channels)


def pointwise(cin: int, cout: int, stride: int = 1, relu: bool = True) -> ConvSpec:
    """A 1x1 convolution followed by norm and (optionally) ReLU."""
    return ConvSpec(cin, cout, 1, stride, norm=True, relu=relu)


def build_conv(spec: ConvSpec, norm: str) -> Conv2d:
    """The module for ``spec``; ``norm`` is a detectron2 norm name ("BN", "SyncBN", ...)."""
    return Conv2d(
        spec.in_channels,
        spec.out_channels,
        kernel_size=spec.kernel,
        stride=spec.stride,
        padding=spec.pad,
        dilation=spec.dilation,
        groups=spec.groups,
        bias=spec.bias,
        norm=get_norm(norm, spec.out_channels) if spec.norm else None,
        activation=F.relu if spec.relu else None,
    )


def build_convs(specs: Iterable[ConvSpec], norm: str) -> nn.Sequential:
    return nn.Sequential(*[build_conv(s, norm) for s in specs])


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in) conv weights and zero conv biases, as the reference."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)

