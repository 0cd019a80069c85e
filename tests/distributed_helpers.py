"""Helpers shared by the multi-process training tests (test_distributed, test_multinode):
the config of the run, one rank's training worker (with the two-rank batch statistics of
the one-process reference, see test_distributed), and the checks of its reports."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

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


@contextlib.contextmanager
def two_rank_batch_norm(world_size: int = 2):
    """Inside the body, every ``NaiveSyncBatchNorm`` of this (single) process computes its
    training statistics as ``world_size`` ranks with ``len(batch) / world_size`` images each
    would (detectron2's ``stats_mode=""`` arithmetic, the all-reduce a plain sum)."""
    from detectron2.layers import NaiveSyncBatchNorm

    def forward(self, input):
        if not self.training:
            return torch.nn.BatchNorm2d.forward(self, input)
        channels = input.shape[1]
        # the training sampler deals the global stream of images out to the ranks in turn
        shards = [input[r::world_size].contiguous() for r in range(world_size)]
        summed = None
        for shard in shards:  # each rank: torch.cat([mean, meansqr]) of its own images
            vec = torch.cat([torch.mean(shard, dim=[0, 2, 3]),
                             torch.mean(shard * shard, dim=[0, 2, 3])])
            summed = vec if summed is None else summed + vec
        mean, meansqr = torch.split(summed * (1.0 / world_size), channels)
        var = meansqr - mean * mean
        scale = self.weight * torch.rsqrt(var + self.eps)
        bias = self.bias - mean * scale
        self.running_mean += self.momentum * (mean.detach() - self.running_mean)
        self.running_var += self.momentum * (var.detach() - self.running_var)
        return input * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)

    saved = NaiveSyncBatchNorm.forward
    NaiveSyncBatchNorm.forward = forward
    try:
        yield
    finally:
        NaiveSyncBatchNorm.forward = saved


def train_worker(argv, report_file, reference_ranks=2):
    """One rank: what ``train_net.py`` does for training, then gather the weights of every
    rank and a hand-made routing evaluation; rank 0 writes them to ``report_file``. A
    one-process run (the reference) trains with the statistics of ``reference_ranks``
    ranks (:func:`two_rank_batch_norm`)."""
    from detectron2.utils import comm

    from dyn_seg.engine import Trainer, unwrap_model
    from dyn_seg.evaluation import RoutingEvaluator
    from dyn_seg.tools import train_net

    cfg = train_net.setup(train_net.argument_parser().parse_args(argv))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)

    def weights():
        return {k: v.detach().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}

    initial = weights()  # after DDP broadcast rank 0's parameters
    one_process = comm.get_world_size() == 1
    with two_rank_batch_norm(reference_ranks) if one_process else contextlib.nullcontext():
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


def _deviation(run, reference):
    """Per tensor (``num_batches_tracked`` aside): (max |run - reference|, max |what
    training changed in the reference|, max |reference|)."""
    for k, v in reference["states"][0].items():
        if k.endswith("num_batches_tracked"):
            continue
        diff = float((run["states"][0][k] - v).abs().max())
        change = float((v - reference["initial"][k]).abs().max())
        yield k, diff, change, float(v.abs().max())


def rounding_amplification(rounding, one) -> float:
    """How much this machine's float32 kernels let the network amplify a rounding-level
    difference over the run: the largest ``|rounding - one| / change`` of any tensor, where
    ``rounding`` trained exactly as ``one`` but for the summation order of the batch
    statistics (one sum over the batch instead of two rank sums added; mathematically the
    same statistics)."""
    return max(diff / change for _, diff, change, _ in _deviation(rounding, one) if change)


def assert_same_result_as_one_process(two, one, rounding):
    """Two ranks against one process with the ranks' batch statistics.

    With the statistics computed alike, the runs differ in the order of float32 sums only
    (losses and gradients averaged per rank then across ranks, against over the whole
    batch): a few u = 2^-24 relative in each gradient, and each update rounds the weight to
    within u * |w|. The network amplifies such differences over the steps by a factor that
    depends on the machine's kernels (measured here with the same 5 steps, as the largest
    deviation over what training changed: 1.6e-3 on a 2-core AMD EPYC with AVX2, 1.5e-2 with
    AVX-512 kernels, where a fixed 1e-2 failed). So the tolerance is measured in the same
    run: ``rounding`` is the one-process run with only the batch statistics' summation
    order changed (:func:`rounding_amplification`, A), and each tensor may deviate by
    ``max(1e-2, 4 A) * change + 4 * STEPS * u * max(|w|, 1)`` (the second term: the
    rounding of the updates themselves, whose sums are of terms of order one even for a
    small ``w``). A real mistake (gradients summed instead of averaged, a rank's own
    statistics, another learning rate) moves tensors by a large part of their change; A
    itself must stay below 5e-2 for the comparison to mean something. Losses: rtol 1e-4,
    the same argument for a scalar. Running means and variances are compared too: both
    runs keep NaiveSyncBN's biased variance; ``num_batches_tracked`` is not kept by
    NaiveSyncBN on two ranks.
    """
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    for k in one["initial"]:
        assert torch.equal(two["initial"][k], one["initial"][k]), k  # same start
        assert torch.equal(rounding["initial"][k], one["initial"][k]), k
    amplification = rounding_amplification(rounding, one)
    assert amplification < 5e-2, amplification
    relative = max(1e-2, 4 * amplification)
    u = torch.finfo(torch.float32).eps / 2
    for k, diff, change, size in _deviation(two, one):
        bound = relative * change + 4 * STEPS * u * max(size, 1.0)
        assert diff <= bound, (k, diff, bound, amplification)
