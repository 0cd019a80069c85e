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
    from dyn_seg import get_dyn_seg_cfg

    cfg = get_dyn_seg_cfg()  # dyn_seg's keys + configs/Base-DynamicRouting.yaml
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


def routing_spaces(max_layers: int):
    """Hypothesis strategy: a valid ``(LAYER_NUM, CELL_NUM_LIST)`` with up to ``max_layers``
    layers (1 or 2 cells first, then each layer keeps or adds one cell, at most 4)."""
    from hypothesis import strategies as st

    @st.composite
    def spaces(draw):
        layer_num = draw(st.integers(1, max_layers))
        counts = [draw(st.integers(1, 2))]
        for _ in range(layer_num - 1):
            counts.append(min(4, counts[-1] + draw(st.integers(0, 1))))
        return layer_num, counts

    return spaces()


def register_synthetic_train_split(root_dir: str, prefix: str) -> str:
    """Generate two synthetic 32x64 street scenes under ``root_dir`` and register their
    train split under a unique name starting with ``prefix`` (detectron2's builtin names
    read DETECTRON2_DATASETS once, at import). Returns the name; remove it with
    ``DatasetCatalog.remove``."""
    import uuid

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    from dyn_seg.synthetic import generate_synthetic_cityscapes

    root = generate_synthetic_cityscapes(root_dir, num_train=2, num_val=1, height=32,
                                         width=64, progress=False)
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "train")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: load_cityscapes_semantic(image_dir, gt_dir))
    builtin = MetadataCatalog.get("cityscapes_fine_sem_seg_train")
    MetadataCatalog.get(name).set(stuff_classes=builtin.stuff_classes, ignore_label=255,
                                  evaluator_type="sem_seg")
    return name
