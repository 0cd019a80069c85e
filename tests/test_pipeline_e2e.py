"""The whole pipeline through the real command line, on generated data, on the CPU:
train -> checkpoint -> --resume -> --eval-only -> DefaultPredictor, two-process training,
and a short schedule that learns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dyn_seg.data import generate_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "Synthetic" / "Dynamic-Tiny.yaml"

# Small and quick: 64x128 frames, a few iterations, evaluation only at the end.
QUICK = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "1000",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "1000",
    "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(64, 96)",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate_synthetic_cityscapes(str(tmp_path_factory.mktemp("data")), num_train=4,
                                         num_val=2, height=64, width=128, progress=False)


def train_net(dataset_root, *args, timeout=600):
    """Run ``python train_net.py ARGS`` with the data exported; return its output."""
    env = dict(os.environ, DETECTRON2_DATASETS=dataset_root,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # one math thread per process: no oversubscription
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"train_net.py {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def metrics(output_dir):
    with open(output_dir / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_iteration(output_dir):
    name = (output_dir / "last_checkpoint").read_text().strip()
    return torch.load(output_dir / name, weights_only=True)["iteration"]


def eval_results(output_dir):
    with open(output_dir / "eval_results.json") as f:
        return json.load(f)


def test_train_resume_evaluate_and_predict(dataset_root, tmp_path):
    out = tmp_path / "run"
    common = ["OUTPUT_DIR", str(out), *QUICK]

    # train 4 iterations: periodic and final checkpoints, routing statistics in metrics.json,
    # precise BN on training batches before the final checkpoint
    log = train_net(dataset_root, *common, "SOLVER.MAX_ITER", "4",
                    "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2")
    assert "Running precise-BN for 2 iterations" in log
    assert (out / "model_0000001.pth").is_file() and (out / "model_final.pth").is_file()
    assert checkpoint_iteration(out) == 3
    last_train = [m for m in metrics(out) if "total_loss" in m][-1]
    for key in ("flops/real_gflops", "flops/expected_gflops", "routing/gate_active_rate",
                "lr", "loss_sem_seg"):
        assert np.isfinite(last_train[key]), key
    assert "mIoU" in log

    # --resume continues at the next iteration up to the new MAX_ITER
    log = train_net(dataset_root, "--resume", *common, "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 4" in log
    assert checkpoint_iteration(out) == 5
    iterations = [m["iteration"] for m in metrics(out) if "total_loss" in m]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 5
    trained = eval_results(out)

    # --eval-only with MODEL.WEIGHTS reproduces the evaluation at the end of training, and
    # adds the test-time-augmented one (one scale + flip: twice the compute)
    eval_out = tmp_path / "eval"
    log = train_net(dataset_root, "--eval-only", "OUTPUT_DIR", str(eval_out), *QUICK,
                    "MODEL.WEIGHTS", str(out / "model_final.pth"), "TEST.AUG.ENABLED", "True",
                    "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.FLIP", "True")
    assert "mIoU" in log and "real GFLOPs" in log and "(TTA): mIoU" in log
    evaluated = eval_results(eval_out)
    assert evaluated["sem_seg"]["mIoU"] == pytest.approx(trained["sem_seg"]["mIoU"])
    routing = evaluated["routing"]
    assert routing["GFLOPs_real"] == pytest.approx(trained["routing"]["GFLOPs_real"])
    assert routing["GFLOPs_real"] > routing["GFLOPs_expected"] > 0
    assert 0 <= evaluated["sem_seg_TTA"]["mIoU"] <= 100
    assert evaluated["routing_TTA"]["GFLOPs_real"] == pytest.approx(2 * routing["GFLOPs_real"],
                                                                    rel=0.05)

    # DefaultPredictor with the trained weights on a raw image of odd size
    from detectron2.engine import DefaultPredictor

    from dyn_seg import get_dyn_seg_cfg

    cfg = get_dyn_seg_cfg(str(CONFIG), [*QUICK, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                        "MODEL.DEVICE", "cpu"])
    image = np.random.default_rng(0).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    prediction = DefaultPredictor(cfg)(image)
    assert prediction["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 333, 517)
    assert prediction["flops"]["real"] > 0


def test_two_cpu_processes_train_together(dataset_root, tmp_path):
    out = tmp_path / "ddp"
    log = train_net(dataset_root, "--num-gpus", "2", "--dist-url", "auto",
                    "OUTPUT_DIR", str(out), *QUICK, "SOLVER.MAX_ITER", "2")
    assert checkpoint_iteration(out) == 1
    assert "mIoU" in log


@pytest.mark.slow
def test_short_schedule_learns_far_above_the_untrained_network(tmp_path):
    root = generate_synthetic_cityscapes(str(tmp_path / "data"), progress=False)
    untrained = tmp_path / "untrained"
    train_net(root, "--eval-only", "--allow-partial-weights", "OUTPUT_DIR", str(untrained),
              "SEED", "0")
    trained = tmp_path / "trained"
    train_net(root, "OUTPUT_DIR", str(trained), "SEED", "0", "SOLVER.MAX_ITER", "150",
              "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0")

    before = eval_results(untrained)["sem_seg"]["mIoU"]
    after = eval_results(trained)["sem_seg"]["mIoU"]
    assert after > 30.0 and after > before + 20.0, (before, after)
