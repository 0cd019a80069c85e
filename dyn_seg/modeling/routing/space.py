"""Pure topology of the routing space: which cells exist and how they connect.

No tensors here. A cell is addressed by ``(layer, scale)``; scale index ``i`` means stride
``4 * 2**i`` and ``INIT_CHANNEL * 2**i`` channels. Layer ``-1`` is the init layer (one cell
at stride 4 on the stem output). Every function is a pure function of the configuration so
that tests, FLOPs accounting and the converter can reason about a network without building
it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

# The three scale transitions, in the order of the gate's output channels.
KEEP, UP, DOWN = "keep", "up", "down"
PATH_ORDER = (KEEP, UP, DOWN)
STEM_STRIDE = 4


class RoutingSpaceError(ValueError):
    """An invalid routing-space configuration (the message names key, value and rule)."""


@dataclass(frozen=True)
class CellInput:
    """One input of a cell: the transition ``path`` of cell ``(layer, scale)``."""

    layer: int
    scale: int
    path: str


@dataclass(frozen=True)
class CellSpec:
    """Static description of one routing cell."""

    layer: int
    scale: int
    channels: int
    stride: int
    inputs: Tuple[CellInput, ...]
    paths: Tuple[str, ...]  # outputs it makes, in gate-channel order (keep first)

    @property
    def num_paths(self) -> int:
        return len(self.paths)


def num_scales(max_stride: int) -> int:
    """Number of scales from stride 4 up to ``max_stride`` (4 for ``MAX_STRIDE`` 32)."""
    if max_stride < STEM_STRIDE or max_stride & (max_stride - 1):
        raise RoutingSpaceError(
            f"MODEL.BACKBONE.MAX_STRIDE={max_stride} is not allowed: it must be a power of two "
            f">= {STEM_STRIDE} (e.g. 32 for strides 4, 8, 16, 32)."
        )
    return int(math.log2(max_stride // STEM_STRIDE)) + 1


def default_cell_num_list(layer_num: int, max_stride: int = 32) -> List[int]:
    """The paper's space: opens one scale per layer, ``[2, 3, 4] + [4] * (L - 3)``."""
    top = num_scales(max_stride)
    return [min(l + 2, top) for l in range(layer_num)]


def validate_cell_num_list(cell_num_list: Sequence[int], layer_num: int, max_stride: int) -> None:
    """Raise :class:`RoutingSpaceError` unless the list describes a valid routing space.

    Valid: exactly ``layer_num`` entries; the first is 1 or 2 (the init layer can only keep
    or go down once); each next entry equals the previous or is one more (a layer opens at
    most one new scale); none exceeds the number of scales that ``MAX_STRIDE`` allows.
    """
    top = num_scales(max_stride)
    if layer_num < 1:
        raise RoutingSpaceError(
            f"MODEL.BACKBONE.LAYER_NUM={layer_num} is not allowed: it must be >= 1 (16 or 33 in "
            "the paper)."
        )
    cells = list(cell_num_list)
    if len(cells) != layer_num:
        raise RoutingSpaceError(
            f"MODEL.BACKBONE.CELL_NUM_LIST={cells} has {len(cells)} entries but LAYER_NUM="
            f"{layer_num}: give one cell count per layer, e.g. "
            f"{default_cell_num_list(layer_num, max_stride)}."
        )
    for l, n in enumerate(cells):
        prev = 1 if l == 0 else cells[l - 1]
        if not isinstance(n, int) or isinstance(n, bool):
            raise RoutingSpaceError(
                f"MODEL.BACKBONE.CELL_NUM_LIST[{l}]={n!r} is not an integer."
            )
        if n > top:
            raise RoutingSpaceError(
                f"MODEL.BACKBONE.CELL_NUM_LIST[{l}]={n} asks for more scales than MAX_STRIDE="
                f"{max_stride} allows ({top}: strides {[STEM_STRIDE << i for i in range(top)]}). "
                "Lower the entry or raise MAX_STRIDE."
            )
        if n < prev or n > prev + 1:
            raise RoutingSpaceError(
                f"MODEL.BACKBONE.CELL_NUM_LIST={cells} is not allowed at layer {l}: {n} cells "
                f"after {prev}; each layer keeps the previous count or opens one more scale "
                "(first layer 1 or 2), counts between 1 and the number of scales."
            )


def build_routing_space(
    layer_num: int, cell_num_list: Sequence[int], init_channel: int, max_stride: int = 32
) -> Tuple[CellSpec, List[List[CellSpec]]]:
    """Describe the init cell and every routed cell.

    Returns ``(init_cell, layers)`` where ``layers[l][i]`` is cell ``(l, i)``.

    Inputs of cell ``(l, i)``, summed: ``down`` of cell ``i-1``, ``keep`` of cell ``i`` and
    ``up`` of cell ``i+1`` of the previous layer, each where that cell exists and makes that
    output. A cell makes ``keep`` always; ``up`` when it is not the finest scale and not in
    the last layer; ``down`` when the next layer has the coarser cell.
    """
    validate_cell_num_list(cell_num_list, layer_num, max_stride)
    counts = [1] + list(cell_num_list)  # counts[0] is the init layer

    def paths(layer_pos: int, scale: int) -> Tuple[str, ...]:
        # layer_pos indexes ``counts``: 0 = init layer, k = routed layer k - 1
        is_last = layer_pos == len(counts) - 1
        out = [KEEP]
        if not is_last and scale > 0:
            out.append(UP)
        if not is_last and scale + 1 < counts[layer_pos + 1]:
            out.append(DOWN)
        return tuple(out)

    def spec(layer_pos: int, scale: int, inputs: Tuple[CellInput, ...]) -> CellSpec:
        return CellSpec(
            layer=layer_pos - 1,
            scale=scale,
            channels=init_channel * 2**scale,
            stride=STEM_STRIDE * 2**scale,
            inputs=inputs,
            paths=paths(layer_pos, scale),
        )

    init_cell = spec(0, 0, ())
    all_specs: List[List[CellSpec]] = [[init_cell]]
    for pos in range(1, len(counts)):
        prev = all_specs[pos - 1]
        layer = []
        for i in range(counts[pos]):
            inputs = []
            if i > 0 and i - 1 < len(prev) and DOWN in prev[i - 1].paths:
                inputs.append(CellInput(pos - 2, i - 1, DOWN))
            if i < len(prev):
                inputs.append(CellInput(pos - 2, i, KEEP))
            if i + 1 < len(prev) and UP in prev[i + 1].paths:
                inputs.append(CellInput(pos - 2, i + 1, UP))
            layer.append(spec(pos, i, tuple(inputs)))
        all_specs.append(layer)
    return init_cell, all_specs[1:]


def feature_names(num: int) -> List[str]:
    """Names of the backbone outputs, finest first: ``layer_0`` (stride 4) ..."""
    return [f"layer_{i}" for i in range(num)]
