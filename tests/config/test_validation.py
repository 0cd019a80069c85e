"""Invalid configurations fail at build time, naming the key, the value and what is allowed."""
from __future__ import annotations

import pytest
from conftest import tiny_cfg
from detectron2.modeling import build_model

CASES = [
    ({"MODEL.BACKBONE.CELL_NUM_LIST": [2, 3]}, r"CELL_NUM_LIST=\[2, 3\].*LAYER_NUM=4"),
    ({"MODEL.BACKBONE.CELL_NUM_LIST": [2, 3, 2, 2]}, r"CELL_NUM_LIST=\[2, 3, 2, 2\].*layer 2"),
    ({"MODEL.BACKBONE.CELL_NUM_LIST": [2, 4, 4, 4]}, r"CELL_NUM_LIST.*one more scale"),
    ({"MODEL.BACKBONE.CELL_NUM_LIST": [3, 4, 4, 4]}, r"CELL_NUM_LIST.*first layer"),
    ({"MODEL.BACKBONE.CELL_NUM_LIST": [2, 3, 4, 4], "MODEL.BACKBONE.MAX_STRIDE": 16},
     r"CELL_NUM_LIST\[2\]=4.*MAX_STRIDE=16"),
    ({"MODEL.BACKBONE.MAX_STRIDE": 24}, r"MAX_STRIDE=24.*power of two"),
    ({"MODEL.BACKBONE.LAYER_NUM": 0}, r"LAYER_NUM=0"),
    ({"MODEL.BACKBONE.CELL_TYPE": ["sep_conv_7x7"]}, r"sep_conv_7x7.*sep_conv_3x3"),
    ({"MODEL.BACKBONE.CELL_TYPE": []}, r"CELL_TYPE is empty"),
    ({"MODEL.BACKBONE.INIT_CHANNEL": 7}, r"INIT_CHANNEL=7"),
    ({"MODEL.BACKBONE.INIT_CHANNEL": 2, "MODEL.BACKBONE.CELL_TYPE": ["Bottleneck_3x3"]},
     r"INIT_CHANNEL=2.*Bottleneck_3x3"),
    ({"MODEL.BACKBONE.DROP_PROB": 1.5}, r"DROP_PROB=1.5"),
    ({"MODEL.SEM_SEG_HEAD.IN_FEATURES": ["layer_0", "res5"]}, r"IN_FEATURES.*res5.*layer_0"),
    ({"MODEL.BUDGET.LOSS_MU": 1.5}, r"LOSS_MU=1.5.*\[0, 1\]"),
    ({"MODEL.BUDGET.FLOPS_ALL": 0.0}, r"FLOPS_ALL=0.0.*> 0"),
    ({"MODEL.BUDGET.LOSS_WEIGHT": -1.0}, r"LOSS_WEIGHT=-1.0.*>= 0"),
    ({"MODEL.BUDGET.UNUPDATE_RATE": 2.0}, r"UNUPDATE_RATE=2.0"),
    ({"MODEL.BUDGET.CONSTRAIN": True, "MODEL.CAL_FLOPS": False}, r"CAL_FLOPS"),
    ({"INPUT.FIX_SIZE_FOR_FLOPS": [768]}, r"FIX_SIZE_FOR_FLOPS=\[768\]"),
    ({"MODEL.PIXEL_MEAN": [1.0, 2.0, 3.0, 4.0], "MODEL.PIXEL_STD": [1.0, 1.0, 1.0, 1.0]},
     r"3-channel|PIXEL_MEAN"),
    ({"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 0}, r"NUM_CLASSES=0.*>= 1"),
    ({"MODEL.BACKBONE.NORM": "GroupNorm"}, r"BACKBONE.NORM='GroupNorm'.*'BN'.*'naiveSyncBN'"),
    ({"MODEL.SEM_SEG_HEAD.NORM": "bn"}, r"SEM_SEG_HEAD.NORM='bn'.*'GN'"),
]


@pytest.mark.parametrize("overrides,message", CASES)
def test_invalid_config_names_key_value_and_rule(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg(**overrides))


def test_wrong_channel_count_image_is_rejected_clearly():
    import torch

    model = build_model(tiny_cfg()).eval()
    with pytest.raises(ValueError, match=r"\(3, H, W\).*\(4, 20, 20\)"):
        model([{"image": torch.zeros(4, 20, 20)}])


def test_negative_learning_rate_names_the_key():
    from dyn_seg.engine.solver import build_optimizer

    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match=r"SOLVER.BASE_LR=-0.1.*>= 0"):
        build_optimizer(tiny_cfg(**{"SOLVER.BASE_LR": -0.1}), model)


@pytest.mark.parametrize("norm", ["SyncBN", "nnSyncBN"])
def test_cuda_sync_bn_with_several_cpu_processes_points_to_naive_sync_bn(norm, monkeypatch):
    from detectron2.utils import comm

    cfg = tiny_cfg(**{"MODEL.BACKBONE.NORM": norm, "MODEL.DEVICE": "cpu"})
    build_model(cfg)  # one process: torch's SyncBatchNorm is a plain batch norm
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match=rf"BACKBONE.NORM='{norm}'.*2 processes.*naiveSyncBN"):
        build_model(cfg)


def _value_errors_by_key():
    """``{key: {module, ...}}`` of every ``raise`` in the package whose message starts with
    ``KEY=value`` (the form of a config value refused), message text from its literals."""
    import ast
    import re
    from collections import defaultdict

    from conftest import REPO

    key = re.compile(r"((?:MODEL|INPUT|SOLVER|DATASETS|DATALOADER|TEST)(?:\.[A-Z_0-9]+)+)=")
    found = defaultdict(set)
    for path in sorted((REPO / "dyn_seg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            text = next((n for n in ast.walk(node.exc)
                         if isinstance(n, (ast.JoinedStr, ast.Constant))), None)
            if isinstance(text, ast.JoinedStr):
                text = text.values[0] if text.values else None
            if isinstance(text, ast.Constant) and isinstance(text.value, str):
                match = key.match(text.value)
                if match:
                    found[match.group(1)].add(str(path.relative_to(REPO)))
    return found


def test_each_config_value_is_validated_in_one_module():
    """A key's allowed values are one rule in one place: two modules refusing values of the
    same key drift apart (the same key with two tolerances, two messages)."""
    found = _value_errors_by_key()
    assert {"MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.BACKBONE.INIT_CHANNEL",
            "SOLVER.AMP.PRECISION", "MODEL.FAST.PLAN"} <= set(found)  # the scan sees them
    twice = {k: sorted(v) for k, v in found.items() if len(v) > 1}
    assert not twice, twice


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_float16_autocast_off_cuda_is_refused_by_the_one_precision_check(device_type):
    from dyn_seg.config import check_amp_precision

    check_amp_precision("bfloat16", device_type)
    check_amp_precision("float16", "cuda")
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION='float16' needs a CUDA"):
        check_amp_precision("float16", device_type)
    with pytest.raises(ValueError, match=r"PRECISION='half' is not allowed"):
        check_amp_precision("half")
