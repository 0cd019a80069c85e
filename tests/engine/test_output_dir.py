"""OUTPUT_DIR safety of ``train_net.py``: no second run on a folder in use, no new run over
another run's checkpoints, no ``--resume`` with a model that does not fit the checkpoints,
checked before anything is written; ``--eval-only`` still evaluates such folders."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cfg

from dyn_seg.engine.output_dir import (
    LOCK_NAME,
    OutputDirError,
    lock_output_dir,
    prepare_output_dir,
    release_output_dir,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_net():
    from dyn_seg.tools import train_net

    return train_net


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_cfg().dump())
    return str(path)


def _previous_run(folder: Path, config: str, **overrides) -> Path:
    """A finished run of the tiny model (LAYER_NUM 4 unless overridden): its last checkpoint,
    last_checkpoint, metrics.json and config.yaml, as train_net.py leaves them."""
    from detectron2.modeling import build_model

    from dyn_seg.checkpoint import DynSegCheckpointer

    folder.mkdir(parents=True)
    cfg = tiny_cfg(**overrides)
    DynSegCheckpointer(build_model(cfg), str(folder)).save("model_final", iteration=1)
    (folder / "last_checkpoint").write_text("model_final.pth")
    (folder / "metrics.json").write_text('{"iteration": 0, "total_loss": 3.0}\n')
    (folder / "config.yaml").write_text("# the previous run's config\n")
    return folder


def _setup(train_net, config: str, folder: Path, *flags: str, opts=()):
    args = train_net.argument_parser().parse_args(
        ["--config-file", config, *flags, "OUTPUT_DIR", str(folder), *opts])
    return train_net.setup(args)


def _snapshot(folder: Path):
    """The files directly in ``folder`` (not the lock file) and their contents."""
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.is_file() and p.name != LOCK_NAME}


def test_new_run_over_another_run_is_refused_with_the_choices(train_net, config, tmp_path):
    old = _previous_run(tmp_path / "run", config)
    before = _snapshot(old)
    with pytest.raises(OutputDirError) as e:
        _setup(train_net, config, old)
    message = str(e.value)
    assert str(old) in message and "model_final.pth" in message
    for choice in ("--resume", "another OUTPUT_DIR", "--new-run-subdir"):
        assert choice in message
    assert _snapshot(old) == before  # config.yaml, checkpoint and metrics untouched


def test_new_run_subdir_starts_afresh_beside_the_old_run(train_net, config, tmp_path):
    old = _previous_run(tmp_path / "run", config)
    before = _snapshot(old)
    first = _setup(train_net, config, old, "--new-run-subdir")
    assert Path(first.OUTPUT_DIR) == old / "run_1"
    assert (old / "run_1" / "config.yaml").is_file()
    second = _setup(train_net, config, old, "--new-run-subdir")
    assert Path(second.OUTPUT_DIR) == old / "run_2"  # run_1 is taken
    assert _snapshot(old) == before
    release_output_dir(first.OUTPUT_DIR)
    release_output_dir(second.OUTPUT_DIR)


def test_empty_and_resumed_folders_are_accepted(train_net, config, tmp_path):
    fresh = _setup(train_net, config, tmp_path / "new")
    assert Path(fresh.OUTPUT_DIR) == tmp_path / "new"
    old = _previous_run(tmp_path / "run", config)
    resumed = _setup(train_net, config, old, "--resume")  # same model: resumable
    assert Path(resumed.OUTPUT_DIR) == old
    release_output_dir(fresh.OUTPUT_DIR)
    release_output_dir(resumed.OUTPUT_DIR)


def test_resume_with_another_model_is_refused_before_writing(train_net, config, tmp_path):
    old = _previous_run(tmp_path / "run", config)  # LAYER_NUM 4
    before = _snapshot(old)
    with pytest.raises(OutputDirError) as e:
        _setup(train_net, config, old, "--resume", opts=["MODEL.BACKBONE.LAYER_NUM", "3"])
    message = str(e.value)
    assert "does not match the checkpoint" in message and "model_final.pth" in message
    assert "not in the model" in message  # the fourth layer's cells, with their shapes
    assert "Nothing was written" in message
    assert _snapshot(old) == before  # config.yaml kept: it still describes the checkpoints


def test_eval_only_works_on_a_folder_with_checkpoints(train_net, config, tmp_path):
    old = _previous_run(tmp_path / "run", config)
    lock_output_dir(str(old))  # even while a training run holds the folder
    try:
        cfg = _setup(train_net, config, old, "--eval-only",
                     opts=["MODEL.WEIGHTS", str(old / "model_final.pth")])
    finally:
        release_output_dir(str(old))
    assert Path(cfg.OUTPUT_DIR) == old


HOLD = """
import sys, time
from dyn_seg.engine.output_dir import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_is_refused_with_the_holders_pid_and_a_killed_run_blocks_nothing(
        train_net, config, tmp_path):
    folder = tmp_path / "busy"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError) as e:
            _setup(train_net, config, folder)
        assert f"pid {holder.pid}" in str(e.value) and str(folder) in str(e.value)
        assert not (folder / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
        holder.wait(timeout=30)
    assert (folder / LOCK_NAME).is_file()  # the file stays; the OS released the lock
    cfg = _setup(train_net, config, folder)
    assert Path(cfg.OUTPUT_DIR) == folder
    release_output_dir(cfg.OUTPUT_DIR)


def _rank_worker(folder: str, report: str):
    """One rank of a two-process launch: prepare a folder holding another run, first plainly
    (every rank must get the error, none may hang), then with new_run_subdir."""
    import torch
    from detectron2.utils import comm

    cfg = tiny_cfg(OUTPUT_DIR=folder)
    try:
        prepare_output_dir(cfg, resume=False)
        refused = ""
    except OutputDirError as e:
        refused = str(e)
    chosen = prepare_output_dir(cfg, resume=False, new_run_subdir=True)
    torch.save({"refused": refused, "chosen": chosen}, f"{report}.{comm.get_rank()}")


def test_all_ranks_of_a_launch_share_the_verdict_and_the_folder(config, tmp_path):
    old = _previous_run(tmp_path / "run", config)
    report = str(tmp_path / "rank")
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2], sys.argv[3]]; "
            "from detectron2.engine import launch; import test_output_dir as t; "
            "launch(t._rank_worker, 2, dist_url='auto', args=(sys.argv[4], sys.argv[5]))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    here = Path(__file__).resolve().parent  # this module, and the tests' helpers above it
    proc = subprocess.run([sys.executable, "-c", code, str(here), str(here.parent), str(REPO),
                           str(old), report], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import torch

    ranks = [torch.load(f"{report}.{r}", weights_only=False) for r in (0, 1)]
    assert ranks[0]["refused"] and ranks[0]["refused"] == ranks[1]["refused"]
    assert "holds another training run" in ranks[0]["refused"]
    assert ranks[0]["chosen"] == ranks[1]["chosen"] == str(old / "run_1")
    assert not (old / "run_2").exists()  # only the main process created a folder
