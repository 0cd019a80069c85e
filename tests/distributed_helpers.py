"""Helpers shared by the multi-process training tests (test_distributed, test_multinode):
the config of the run, one rank's training worker, and the checks of its reports."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 5

# No random augmentation and no ignored pixels: the per-rank mean losses then average to
# exactly the one-process loss over the same four images, so only rounding may differ.
CONFIG = f"""
VERSION: 2
MODEL:
  DEVICE: cpu
  BACKBONE: {{LAYER_NUM: 4, INIT_CHANNEL: 8, STEM_WIDTH: 16, NORM: naiveSyncBN}}
  SEM_SEG_HEAD: {{NORM: naiveSyncBN}}
DATASETS:
  TRAIN: ("cityscapes_fine_sem_seg_train",)
  TEST: ("cityscapes_fine_sem_seg_val",)
INPUT:
  MIN_SIZE_TRAIN: (64,)
  MAX_SIZE_TRAIN: 1000
  MIN_SIZE_TEST: 64
  MAX_SIZE_TEST: 1000
  CROP:
    ENABLED: False
  RANDOM_FLIP: none
SOLVER:
  IMS_PER_BATCH: 4
  BASE_LR: 0.05
  MOMENTUM: 0.9
  MAX_ITER: {STEPS}
  CHECKPOINT_PERIOD: 1000
  WARMUP_ITERS: 0
DATALOADER:
  NUM_WORKERS: 0
TEST:
  EVAL_PERIOD: 0
  CITYSCAPES_OFFICIAL_EVAL: False
SEED: 5
"""


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_worker(argv, report_file):
    """One rank: what ``train_net.py`` does for training, then gather the weights of every
    rank and a hand-made routing evaluation; rank 0 writes them to ``report_file``."""
    from detectron2.utils import comm

    from dyn_seg.engine import Trainer, unwrap_model
    from dyn_seg.evaluation import RoutingEvaluator

    train_net = load_train_net()
    cfg = train_net.setup(train_net.argument_parser().parse_args(argv))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)

    def weights():
        return {k: v.detach().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}

    initial = weights()  # after DDP broadcast rank 0's parameters
    results = trainer.train()
    states = comm.all_gather(weights())

    # every rank evaluates different images: rank r reports r + 1 real GFLOPs for its two
    evaluator = RoutingEvaluator(distributed=True)
    evaluator.reset()
    rank = comm.get_rank()
    outputs = [{"flops": {"real": rank + 1.0, "expected": rank + 0.5},
                "routing": {(0, 0): torch.tensor([1.0, 0.0]), (-1, 0): torch.ones(2)}}] * 2
    evaluator.process([{}, {}], outputs)
    routing = evaluator.evaluate()
    if comm.is_main_process():
        losses = [v for v, _ in trainer.storage.history("total_loss").values()]
        torch.save({"world_size": comm.get_world_size(), "initial": initial, "states": states,
                    "losses": losses, "results": results, "routing": routing}, report_file)


def assert_ranks_hold_identical_parameters_and_buffers(two):
    rank0, rank1 = two["states"]
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ in {k}"
    assert any(k.endswith("running_mean") for k in rank0)


def assert_same_result_as_one_process(two, one):
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    for k in one["initial"]:
        assert torch.equal(two["initial"][k], one["initial"][k]), k  # same start
    for k, v in one["states"][0].items():
        if k.endswith(("running_var", "num_batches_tracked")):
            continue  # NaiveSyncBN keeps the biased variance, BatchNorm the unbiased one
        ours = two["states"][0][k]
        change = (v - one["initial"][k]).abs().max()  # what training changed
        assert (ours - v).abs().max() <= 1e-3 * change + 1e-6, k
