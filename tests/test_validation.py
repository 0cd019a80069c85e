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
