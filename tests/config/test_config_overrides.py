"""Command-line ``KEY VALUE`` overrides: an integer for a float key is that float; any
other type mismatch is an error naming the key, the type it takes and an example."""
from __future__ import annotations

import pytest

from dyn_seg import get_dyn_seg_cfg


def test_an_integer_for_a_float_key_is_that_float():
    cfg = get_dyn_seg_cfg("", ["MODEL.GATE.GATE_INIT_BIAS", "-100", "SOLVER.BASE_LR", "1"])
    assert cfg.MODEL.GATE.GATE_INIT_BIAS == -100.0
    assert isinstance(cfg.MODEL.GATE.GATE_INIT_BIAS, float)
    assert isinstance(cfg.SOLVER.BASE_LR, float) and cfg.SOLVER.BASE_LR == 1.0


def test_matching_types_are_merged_as_before():
    cfg = get_dyn_seg_cfg("", ["INPUT.MIN_SIZE_TRAIN", "(64, 96)", "SOLVER.MAX_ITER", "7",
                               "MODEL.DEVICE", "cpu", "MODEL.GATE.GATE_INIT_BIAS", "0.5"])
    assert cfg.INPUT.MIN_SIZE_TRAIN == (64, 96) and cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.GATE.GATE_INIT_BIAS == 0.5


@pytest.mark.parametrize("key, value, expected, example", [
    ("MODEL.GATE.GATE_INIT_BIAS", "abc", "a float", "MODEL.GATE.GATE_INIT_BIAS 1.5"),
    ("SOLVER.MAX_ITER", "1.5", "an int", "SOLVER.MAX_ITER "),
    ("INPUT.MIN_SIZE_TRAIN", "64", "a tuple", 'INPUT.MIN_SIZE_TRAIN "('),
])
def test_other_mismatches_name_the_key_the_type_and_an_example(key, value, expected,
                                                               example):
    with pytest.raises(ValueError) as e:
        get_dyn_seg_cfg("", [key, value])
    message = str(e.value)
    assert f"{key} {value}" in message and f"takes {expected}" in message
    assert f"e.g. {example}" in message
