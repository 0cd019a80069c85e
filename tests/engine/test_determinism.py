"""With a fixed SEED on the CPU, two training runs give identical losses step by step,
with random augmentations, drop path and the budget loss on, with and without loader
worker processes."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from dyn_seg.data import generate_synthetic_cityscapes
from dyn_seg.engine import Trainer

STEPS = 20
LOSS_KEYS = ("total_loss", "loss_sem_seg", "loss_budget")

CONFIG = """
VERSION: 2
MODEL:
  DEVICE: cpu
  BACKBONE: {LAYER_NUM: 4, INIT_CHANNEL: 8, STEM_WIDTH: 16, DROP_PROB: 0.2}
  BUDGET: {CONSTRAIN: True, UNUPDATE_RATE: 0.0, FLOPS_ALL: 5.0}
INPUT:
  MIN_SIZE_TRAIN: (48, 64, 80)
  MAX_SIZE_TRAIN: 1000
  CROP:
    ENABLED: True
    TYPE: absolute
    SIZE: (48, 64)
  RANDOM_FLIP: horizontal
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.02
  MAX_ITER: 20
  CHECKPOINT_PERIOD: 1000
  WARMUP_ITERS: 2
TEST: {EVAL_PERIOD: 0}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(train_net module, config file, registered dataset name)."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    base = tmp_path_factory.mktemp("determinism")
    root = generate_synthetic_cityscapes(str(base / "data"), num_train=6, num_val=1,
                                         height=64, width=128, progress=False)
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "train")
    name = f"determinism_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: load_cityscapes_semantic(image_dir, gt_dir))
    MetadataCatalog.get(name).set(ignore_label=255, evaluator_type="sem_seg")
    config = base / "tiny.yaml"
    config.write_text(CONFIG)

    from dyn_seg.tools import train_net

    yield train_net, str(config), name
    DatasetCatalog.remove(name)


def _train(setup, output_dir: Path, seed: int, workers: int):
    """Train as ``train_net.py`` does (its ``setup`` seeds every generator from SEED);
    return the per-step losses and the loss entries of metrics.json."""
    train_net, config, dataset = setup
    args = train_net.argument_parser().parse_args([
        "--config-file", config, "OUTPUT_DIR", str(output_dir), "SEED", str(seed),
        "DATALOADER.NUM_WORKERS", str(workers), "DATASETS.TRAIN", f"('{dataset}',)",
        "DATASETS.TEST", "()",
    ])
    cfg = train_net.setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    steps = {key: trainer.storage.history(key).values() for key in LOSS_KEYS}
    with open(output_dir / "metrics.json") as f:
        logged = [{k: v for k, v in json.loads(line).items() if k in LOSS_KEYS + ("iteration",)}
                  for line in f]
    return steps, logged


@pytest.mark.parametrize("workers", [0, 2])
def test_fixed_seed_gives_identical_first_steps(setup, tmp_path, workers):
    first_steps, first_log = _train(setup, tmp_path / "a", seed=11, workers=workers)
    second_steps, second_log = _train(setup, tmp_path / "b", seed=11, workers=workers)
    for key in LOSS_KEYS:
        assert [it for _, it in first_steps[key]] == list(range(STEPS)), key
        assert first_steps[key] == second_steps[key], key  # exact, step by step
    assert first_log == second_log and first_log


def test_another_seed_gives_other_losses(setup, tmp_path):
    first, _ = _train(setup, tmp_path / "a", seed=11, workers=0)
    other, _ = _train(setup, tmp_path / "b", seed=12, workers=0)
    assert first["total_loss"] != other["total_loss"]
