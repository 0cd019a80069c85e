"""Topology of the routing space (pure functions, no tensors)."""
from __future__ import annotations

from conftest import routing_spaces
from hypothesis import given, settings

from dyn_seg.modeling.routing.space import (
    DOWN,
    KEEP,
    UP,
    build_routing_space,
    default_cell_num_list,
)


def _inputs(cell):
    return {(i.scale, i.path) for i in cell.inputs}


def test_paper_space_opens_one_scale_per_layer():
    assert default_cell_num_list(16) == [2, 3, 4] + [4] * 13
    _, layers = build_routing_space(16, default_cell_num_list(16), 64)
    assert [len(layer) for layer in layers] == [2, 3, 4] + [4] * 13
    assert [c.channels for c in layers[5]] == [64, 128, 256, 512]
    assert [c.stride for c in layers[5]] == [4, 8, 16, 32]


def test_inputs_of_the_first_layers_follow_the_reference():
    _, layers = build_routing_space(16, default_cell_num_list(16), 64)
    assert _inputs(layers[0][0]) == {(0, KEEP)}
    assert _inputs(layers[0][1]) == {(0, DOWN)}  # newest scale: only the down input
    assert _inputs(layers[1][0]) == {(0, KEEP), (1, UP)}
    assert _inputs(layers[1][1]) == {(0, DOWN), (1, KEEP)}
    assert _inputs(layers[1][2]) == {(1, DOWN)}
    assert _inputs(layers[2][2]) == {(1, DOWN), (2, KEEP)}
    assert _inputs(layers[2][3]) == {(2, DOWN)}
    assert _inputs(layers[3][1]) == {(0, DOWN), (1, KEEP), (2, UP)}
    assert _inputs(layers[3][3]) == {(2, DOWN), (3, KEEP)}


def test_outputs_keep_always_up_unless_finest_down_unless_coarsest():
    init, layers = build_routing_space(16, default_cell_num_list(16), 64)
    assert init.paths == (KEEP, DOWN)
    for l, layer in enumerate(layers):
        for i, cell in enumerate(layer):
            last = l == len(layers) - 1
            assert KEEP in cell.paths
            assert (UP in cell.paths) == (i > 0 and not last)
            assert (DOWN in cell.paths) == (i < 3 and not last)
            assert cell.paths[0] == KEEP  # gate channel order keep, up, down
            assert list(cell.paths) == sorted(cell.paths, key=[KEEP, UP, DOWN].index)


@settings(max_examples=60, deadline=None)
@given(routing_spaces(10))
def test_every_cell_of_a_valid_space_is_reachable_and_local(space):
    layer_num, counts = space
    init, layers = build_routing_space(layer_num, counts, 8)
    assert [len(layer) for layer in layers] == counts
    previous = [init]
    for layer in layers:
        for cell in layer:
            assert cell.inputs, "every cell receives something"
            for inp in cell.inputs:
                assert abs(inp.scale - cell.scale) <= 1
                sender = previous[inp.scale]
                assert inp.path in sender.paths
        previous = layer
