"""Two CPU processes (gloo) train through the ``--num-gpus`` code path with NaiveSyncBN:
their parameters stay identical, they match one process with the same global batch, and
the evaluators gather routing/FLOPs statistics from both ranks.

The one-process reference computes its batch statistics as the two ranks do. In one
process detectron2's ``NaiveSyncBatchNorm`` is plain ``BatchNorm2d`` (two-pass variance,
unbiased running variance), while on two ranks it averages each rank's ``E[x]`` and
``E[x^2]`` and takes ``E[x^2] - E[x]^2``. That one-pass variance loses about
``u * E[x^2] / Var[x]`` (u = 2^-24, float32) to cancellation, with rounding that depends
on the CPU's vector width: comparing it with the two-pass variance failed on AVX-512
machines (3e-4 in the stem weight after 5 steps). :func:`two_rank_batch_norm` gives the
reference the ranks' arithmetic: rank r's images (``r::2`` of the global batch), their
means and mean squares, summed and halved as the all-reduce does, then detectron2's
formula. What still differs is summation order in the loss and gradient averaging (per rank
then across ranks, against over the whole batch), a few u per gradient; see
:func:`_assert_same_result_as_one_process` for the tolerance this gives."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyn_seg.data import generate_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
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


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _train_worker(argv, report_file, reference_ranks=2):
    """One rank: what ``train_net.py`` does for training, then gather the weights of every
    rank and a hand-made routing evaluation; rank 0 writes them to ``report_file``. A
    one-process run (the reference) trains with the statistics of ``reference_ranks``
    ranks (:func:`two_rank_batch_norm`)."""
    from detectron2.utils import comm

    from dyn_seg.engine import Trainer, unwrap_model
    from dyn_seg.evaluation import RoutingEvaluator

    train_net = _load_train_net()
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


def main(argv):
    """``python -c`` entry: train with 2 processes, then with 1, writing two reports."""
    from detectron2.engine import launch

    config, out = argv
    for world_size in (2, 1):
        run = Path(out) / f"world{world_size}"
        launch(_train_worker, world_size, dist_url="auto",
               args=(["--config-file", config, "OUTPUT_DIR", str(run)], str(run) + ".pt"))


def _train_one_and_two_processes(base: Path):
    """Run :func:`main` in a fresh interpreter; return the (two-process, one-process)
    reports."""
    root = generate_synthetic_cityscapes(str(base / "data"), num_train=4, num_val=2,
                                         height=64, width=128, progress=False)
    for path in Path(root, "cityscapes", "gtFine", "train").rglob("*_labelTrainIds.png"):
        labels = np.asarray(Image.open(path)).copy()
        labels[labels == 255] = 0
        Image.fromarray(labels).save(path)
    config = base / "ddp.yaml"
    config.write_text(CONFIG)
    env = dict(os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; "
            "import test_distributed; test_distributed.main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, str(config), str(base)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return (torch.load(base / "world2.pt", weights_only=False),
            torch.load(base / "world1.pt", weights_only=False))


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_match_one_process_and_gather_evaluation(tmp_path):
    # one test (not three): the two trainings are the expensive part
    two, one = _train_one_and_two_processes(tmp_path)
    assert (two["world_size"], one["world_size"]) == (2, 1)
    _assert_ranks_hold_identical_parameters_and_buffers(two)
    _assert_same_result_as_one_process(two, one)
    _assert_evaluation_gathers_both_ranks(two, one)


def _assert_ranks_hold_identical_parameters_and_buffers(two):
    rank0, rank1 = two["states"]
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ in {k}"
    assert any(k.endswith("running_mean") for k in rank0)


def _assert_same_result_as_one_process(two, one):
    """Two ranks against one process with the ranks' batch statistics.

    Tolerance: with the statistics computed alike, the runs differ in the order of float32
    sums only (losses and gradients averaged per rank then across ranks, against over the
    whole batch): a few u = 2^-24 relative in each gradient, and each update rounds the
    weight to within u * |w|. Over STEPS steps of SGD with momentum that is at most a small
    multiple of u times what training changed plus ``STEPS * u * |w|``, where the sums that
    round are of terms of order one (normalised activations, BN weights start at 1) even
    for a small ``w``; the bound used, ``1e-2 * change + 4 * STEPS * u * max(|w|, 1)``,
    leaves 1e-2 / u ~ 1.7e5 u for the network amplifying gradient differences over the steps
    (measured on a 2-core AMD EPYC with AVX2: at most 1.6e-3 of the change, in a cell's
    convolution weight, with the gates' training path of average pooling + 1x1
    convolution; under 1e-4 with the earlier float32-mean gate path). Losses: rtol 1e-4,
    the same argument for a scalar. Running means and variances are compared too: both
    runs keep NaiveSyncBN's biased variance; ``num_batches_tracked`` is not kept by
    NaiveSyncBN on two ranks.
    """
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    for k in one["initial"]:
        assert torch.equal(two["initial"][k], one["initial"][k]), k  # same start
    u = torch.finfo(torch.float32).eps / 2
    for k, v in one["states"][0].items():
        if k.endswith("num_batches_tracked"):
            continue
        ours = two["states"][0][k]
        change = (v - one["initial"][k]).abs().max()  # what training changed
        bound = 1e-2 * change + 4 * STEPS * u * max(float(v.abs().max()), 1.0)
        assert (ours - v).abs().max() <= bound, (k, float((ours - v).abs().max()), float(bound))


def _assert_evaluation_gathers_both_ranks(two, one):
    routing = two["routing"]["routing"]
    # two images from each rank: 1.0 and 2.0 real GFLOPs
    assert routing["GFLOPs_real"] == pytest.approx(1.5)
    assert (routing["GFLOPs_real_min"], routing["GFLOPs_real_max"]) == (1.0, 2.0)
    assert routing["GFLOPs_expected"] == pytest.approx(1.0)
    assert routing["gates_open_pct"] == pytest.approx(50.0)
    # the evaluation at the end of training covers the whole val split on both runs
    for task in ("sem_seg", "routing"):
        assert two["results"][task].keys() == one["results"][task].keys()
    assert two["results"]["sem_seg"]["mIoU"] == pytest.approx(one["results"]["sem_seg"]["mIoU"],
                                                             abs=0.5)
    # Both runs evaluate one image per forward, so dropping (decided per batch) is the same;
    # but the weights agree only up to rounding (1e-3 of what training changed, see above):
    # expected FLOPs move with the gates' activations (1e-4 to 1e-3 relative), and a gate
    # whose activation sits near GATE_EPS can be open in one run and closed in the other, so
    # real FLOPs, which count a path fully or not at all, may differ by such a path (~1e-4 of
    # the total). The gathering itself is checked exactly above, on hand-made outputs.
    ours, theirs = two["results"]["routing"], one["results"]["routing"]
    for key in ("GFLOPs_real", "GFLOPs_real_min", "GFLOPs_real_max",  # images differ
                "GFLOPs_expected", "GFLOPs_expected_min", "GFLOPs_expected_max"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-2), key
