"""Candidate operations of a routing cell, chosen by name (``MODEL.BACKBONE.CELL_TYPE``).

Each operation keeps its channel count and resolution. It is described as a list of
:class:`ConvSpec` (empty for the identity), from which both the module and its FLOPs are
derived. New operations register with :data:`CELL_OPERATIONS`.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

from detectron2.utils.registry import Registry
from torch import nn

from .layers import ConvSpec, build_convs, depthwise, pointwise
from .space import RoutingSpaceError

CELL_OPERATIONS = Registry("CELL_OPERATIONS")
CELL_OPERATIONS.__doc__ = """
Candidate cell operations, registered under their function name: a function
``channels -> list[ConvSpec]`` describing a stride-1, channel-preserving operation (an empty
list is the identity).
"""


def _sep_conv(c: int, kernel: int, pairs: int = 2) -> List[ConvSpec]:
    specs: List[ConvSpec] = []
    for k in range(pairs):
        specs += [depthwise(c, kernel), pointwise(c, c, relu=k < pairs - 1)]
    return specs


@CELL_OPERATIONS.register()
def sep_conv_3x3(c: int) -> List[ConvSpec]:
    """dw 3x3 -> 1x1 (norm, ReLU) -> dw 3x3 -> 1x1 (norm)."""
    return _sep_conv(c, 3)


@CELL_OPERATIONS.register()
def sep_conv_5x5(c: int) -> List[ConvSpec]:
    return _sep_conv(c, 5)


@CELL_OPERATIONS.register()
def sep_conv_heavy_3x3(c: int) -> List[ConvSpec]:
    """Three dw 3x3 / 1x1 pairs, ReLU after the first two 1x1 convolutions."""
    return _sep_conv(c, 3, pairs=3)


@CELL_OPERATIONS.register()
def dil_conv_3x3(c: int) -> List[ConvSpec]:
    """dw 3x3 with dilation 2 -> 1x1 (norm)."""
    return [depthwise(c, 3, dilation=2), pointwise(c, c, relu=False)]


@CELL_OPERATIONS.register()
def Bottleneck_3x3(c: int) -> List[ConvSpec]:
    """1x1 C->C/4 -> 3x3 C/4 -> 1x1 C/4->C (norm after each, ReLU after the first two)."""
    mid = c // 4
    return [
        pointwise(c, mid),
        ConvSpec(mid, mid, 3, norm=True, relu=True),
        pointwise(mid, c, relu=False),
    ]


@CELL_OPERATIONS.register()
def MBConv_3x3(c: int) -> List[ConvSpec]:
    """Inverted residual: 1x1 C->4C -> dw 3x3 -> 1x1 4C->C (linear)."""
    wide = 4 * c
    return [
        pointwise(c, wide),
        ConvSpec(wide, wide, 3, groups=wide, norm=True, relu=True),
        pointwise(wide, c, relu=False),
    ]


@CELL_OPERATIONS.register()
def conv_3x3_basic(c: int) -> List[ConvSpec]:
    return [ConvSpec(c, c, 3, norm=True)]


@CELL_OPERATIONS.register()
def skip_connect(c: int) -> List[ConvSpec]:
    """The identity."""
    return []


def known_operations() -> List[str]:
    return sorted(name for name, _ in CELL_OPERATIONS)


def operation_specs(name: str, channels: int) -> List[ConvSpec]:
    """The layer specs of operation ``name`` at ``channels``; clear error for unknown names."""
    if name not in CELL_OPERATIONS:
        raise ValueError(
            f"MODEL.BACKBONE.CELL_TYPE contains unknown operation {name!r}; known operations: "
            f"{known_operations()}."
        )
    fn: Callable[[int], List[ConvSpec]] = CELL_OPERATIONS.get(name)
    return fn(channels)


def validate_cell_type(cell_type: Sequence[str], init_channel: int) -> None:
    """Check the operation names and every rule on ``MODEL.BACKBONE.INIT_CHANNEL``: even
    (gates and up transitions halve the channels), and large enough for each operation's
    channel arithmetic."""
    if init_channel % 2:
        raise RoutingSpaceError(
            f"MODEL.BACKBONE.INIT_CHANNEL={init_channel} is not allowed: it must be even "
            "(gates and up transitions halve the channels), e.g. 16 or 64."
        )
    if not cell_type:
        raise ValueError(
            "MODEL.BACKBONE.CELL_TYPE is empty; give at least one operation, e.g. "
            "['sep_conv_3x3', 'skip_connect']."
        )
    for name in cell_type:
        specs = operation_specs(name, init_channel)
        if any(s.in_channels < 1 or s.out_channels < 1 for s in specs):
            raise ValueError(
                f"MODEL.BACKBONE.INIT_CHANNEL={init_channel} is too small for operation {name!r} "
                "(it divides the channels); use a multiple of 4, e.g. 16 or 64."
            )


class CellOperation(nn.Module):
    """One candidate operation as a module; the identity when its spec list is empty."""

    def __init__(self, name: str, channels: int, norm: str):
        super().__init__()
        self.name = name
        self.specs = operation_specs(name, channels)
        self.layers = build_convs(self.specs, norm)

    @property
    def is_identity(self) -> bool:
        return not self.specs

    def forward(self, x):
        return self.layers(x) if self.specs else x


__all__ = [
    "CELL_OPERATIONS",
    "CellOperation",
    "known_operations",
    "operation_specs",
    "validate_cell_type",
]
