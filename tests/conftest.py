"""Shared test helpers: the recorded reference fixture and tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DYN_SEG_SHARED", REPO.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "official_dynamic_l6_c16.pt"


@pytest.fixture(scope="session")
def reference_fixture():
    if not FIXTURE.exists():
        raise FileNotFoundError(
            f"Reference fixture {FIXTURE} is missing: the parity tests need shared/fixtures "
            "beside the repository (or DYN_SEG_SHARED pointing at it)."
        )
    return torch.load(FIXTURE, weights_only=False)


def tiny_cfg(**overrides):
    """A detectron2 config of a small Dynamic Routing network for CPU tests."""
    from detectron2.config import get_cfg

    from dyn_seg import add_dynamic_routing_config

    cfg = get_cfg()
    add_dynamic_routing_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.LAYER_NUM = 4
    cfg.MODEL.BACKBONE.INIT_CHANNEL = 8
    cfg.MODEL.BACKBONE.STEM_WIDTH = 16
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg
