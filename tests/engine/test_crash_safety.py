"""A training process killed with SIGKILL at a random moment leaves only complete
checkpoints and resumes with --resume exactly where its last checkpoint left off; bad
MODEL.WEIGHTS files fail with their name on the last line."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dyn_seg.data import generate_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[2]
MAX_ITER = 45
PERIOD = 3

# One training image and no random augmentation: every batch is the same, so a resumed run
# must reproduce an uninterrupted one bit for bit (the data sampler's position is not
# checkpointed by detectron2, the model, optimizer, LR schedule and iteration are).
CONFIG = f"""
VERSION: 2
MODEL:
  DEVICE: cpu
  BACKBONE: {{LAYER_NUM: 4, INIT_CHANNEL: 8, STEM_WIDTH: 16}}
DATASETS:
  TRAIN: ("cityscapes_fine_sem_seg_train",)
  TEST: ()
INPUT:
  MIN_SIZE_TRAIN: (64,)
  MAX_SIZE_TRAIN: 128
  CROP: {{ENABLED: False}}
  RANDOM_FLIP: none
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.02
  MOMENTUM: 0.9
  MAX_ITER: {MAX_ITER}
  CHECKPOINT_PERIOD: {PERIOD}
  LR_SCHEDULER_NAME: WarmupPolyLR
  WARMUP_ITERS: 10
DATALOADER: {{NUM_WORKERS: 0}}
TEST: {{EVAL_PERIOD: 0}}
SEED: 3
"""


@pytest.fixture(scope="module")
def training_setup(tmp_path_factory):
    """(dataset root, config file), in folders whose names need quoting in a shell."""
    base = tmp_path_factory.mktemp("crash safety")
    root = generate_synthetic_cityscapes(str(base / "data set"), num_train=1, num_val=1,
                                         height=64, width=128, progress=False)
    config = base / "tiny config's.yaml"
    config.write_text(CONFIG)
    return root, str(config)


def _command(config: str, output_dir: Path, *extra: str):
    return [sys.executable, str(REPO / "train_net.py"), "--config-file", config, *extra,
            "OUTPUT_DIR", str(output_dir)]


def _env(root: str):
    env = dict(os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _train(setup, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    root, config = setup
    proc = subprocess.run(_command(config, output_dir, *extra), env=_env(root), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _checkpoints(output_dir: Path):
    return sorted(p for p in output_dir.iterdir() if p.name.startswith("model_"))


def _pointed_iteration(output_dir: Path) -> int:
    """Iteration of the checkpoint last_checkpoint points to (-1 without one)."""
    pointer = output_dir / "last_checkpoint"
    if not pointer.exists():
        return -1
    return int(torch.load(output_dir / pointer.read_text(), weights_only=True)["iteration"])


def _wait_for_checkpoint_after(proc, output_dir: Path, iteration: int):
    """Wait until last_checkpoint points past ``iteration``; return (its iteration, time)."""
    deadline = time.monotonic() + 240
    pointer, seen = output_dir / "last_checkpoint", None
    while True:
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        # load a checkpoint only when the pointer changed: polling by loading it every 10 ms
        # would take the CPU from the training being watched
        name = pointer.read_text() if pointer.exists() else None
        if name is not None and name != seen:
            seen = name
            found = _pointed_iteration(output_dir)
            if found > iteration:
                return found, time.monotonic()
        time.sleep(0.01)


def _train_and_kill(setup, output_dir: Path, after_iteration: int, rng: random.Random,
                    *extra: str) -> float:
    """Start training and SIGKILL it at a random moment within the ~8 iterations that follow
    its second checkpoint past ``after_iteration`` (so the kill can also hit a save).
    Returns the delay after that checkpoint, in seconds."""
    root, config = setup
    proc = subprocess.Popen(_command(config, output_dir, *extra), env=_env(root), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first, t0 = _wait_for_checkpoint_after(proc, output_dir, after_iteration)
        second, t1 = _wait_for_checkpoint_after(proc, output_dir, first)
        seconds_per_iteration = (t1 - t0) / (second - first)
        delay = rng.uniform(0.0, 8 * seconds_per_iteration)
        time.sleep(delay)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return delay


def _assert_only_complete_checkpoints(output_dir: Path) -> int:
    """Every model_*.pth is a complete checkpoint of its iteration and last_checkpoint points
    to one of them; leftovers of an interrupted save are hidden temp files. Returns the
    iteration last_checkpoint points to."""
    names = sorted(os.listdir(output_dir))
    for name in names:
        assert name.startswith("model_") or name in {
            "last_checkpoint", "metrics.json", "log.txt", "config.yaml", "train.lock"
        } or name.startswith("events.out.tfevents") or (
            name.startswith(".model_") and name.endswith(".tmp")
        ), f"unexpected file {name} in {names}"
    for path in _checkpoints(output_dir):
        ckpt = torch.load(path, weights_only=True)  # raises on a truncated file
        assert {"model", "trainer", "iteration"} <= set(ckpt), path
        assert {"optimizer"} <= set(ckpt["trainer"]["_trainer"]), path
        assert "LRScheduler" in ckpt["trainer"]["hooks"], path
        assert int(path.stem.split("_")[1]) == ckpt["iteration"], path
    pointed = (output_dir / "last_checkpoint").read_text()
    assert (output_dir / pointed).is_file(), pointed
    return _pointed_iteration(output_dir)


def _lr_by_iteration(output_dir: Path):
    lrs = {}
    with open(output_dir / "metrics.json") as f:
        for line in f:
            entry = json.loads(line)
            if "lr" in entry:
                lrs.setdefault(entry["iteration"], []).append(entry["lr"])
    return lrs


def _assert_same_training_state(a: Path, b: Path):
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert ca["iteration"] == cb["iteration"] == ca["trainer"]["iteration"]
    # the LR schedule's position (detectron2 keeps it in the LRScheduler hook's state)
    assert ca["trainer"]["hooks"] == cb["trainer"]["hooks"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"{k} differs ({a.name})"
    oa, ob = ca["trainer"]["_trainer"]["optimizer"], cb["trainer"]["_trainer"]["optimizer"]
    assert oa["state"].keys() == ob["state"].keys() and oa["state"]
    for k in oa["state"]:
        assert torch.equal(oa["state"][k]["momentum_buffer"], ob["state"][k]["momentum_buffer"]), k
    assert oa["param_groups"] == ob["param_groups"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_continues_exactly(training_setup, tmp_path):
    reference = tmp_path / "uninterrupted"
    _train(training_setup, reference)

    rng = random.Random()  # a different moment every run; the delays are in the messages
    run = tmp_path / "killed run (1) 'quoted'"
    delays = [_train_and_kill(training_setup, run, -1, rng)]
    first = _assert_only_complete_checkpoints(run)
    assert first < MAX_ITER - 1, f"not killed during training (delay {delays})"

    delays.append(_train_and_kill(training_setup, run, first, rng, "--resume"))
    second = _assert_only_complete_checkpoints(run)
    assert first < second < MAX_ITER - 1, (first, second, delays)

    resumed = _train(training_setup, run, "--resume")
    log = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {second + 1}" in log, (delays, log[-2000:])

    # every checkpoint, written before or after a kill, equals the uninterrupted run's
    names = [p.name for p in _checkpoints(run)]
    assert names == [p.name for p in _checkpoints(reference)]
    for name in names:
        _assert_same_training_state(reference / name, run / name)
    # the LR logged after each resume is the uninterrupted run's at the same iteration
    ref_lr, run_lr = _lr_by_iteration(reference), _lr_by_iteration(run)
    assert run_lr and set(run_lr) <= set(ref_lr)
    for iteration, values in run_lr.items():
        assert values == [ref_lr[iteration][0]] * len(values), (iteration, delays)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "foreign"])
def test_bad_model_weights_name_the_file_on_the_last_line(training_setup, tmp_path, kind):
    folder = tmp_path / "weights dir"
    folder.mkdir()
    weights = folder / f"it's {kind} (copy).pth"
    if kind == "truncated":
        torch.save({"model": {"backbone.stem.stem_1.weight": torch.zeros(16, 3, 3, 3)},
                    "pad": torch.zeros(4096)}, weights)
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"model": {"fc.weight": torch.zeros(10, 10)}}, weights)
    root, config = training_setup
    proc = subprocess.run(
        _command(config, tmp_path / "out", "MODEL.WEIGHTS", str(weights)),
        env=_env(root), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == str(weights), proc.stderr[-2000:]
    assert not (tmp_path / "out" / "last_checkpoint").exists()
