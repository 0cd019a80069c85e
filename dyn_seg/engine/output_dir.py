"""What a training run checks about its ``OUTPUT_DIR`` before it writes anything there.

* **One run per folder.** The main process holds an exclusive lock on
  ``OUTPUT_DIR/train.lock`` (an OS file lock through portalocker, so the operating system
  releases it when the process ends, also after a crash or ``kill -9``: no stale lock can
  block a later run). A second run on the same folder is refused with the holder's pid.
* **No silent overwrite.** A new run (no ``--resume``) in a folder that holds another run's
  checkpoints or ``metrics.json`` is refused with the choices: ``--resume`` to continue it,
  another ``OUTPUT_DIR``, or ``--new-run-subdir`` to start afresh in the next free
  ``OUTPUT_DIR/run_N`` (the old run stays untouched).
* **Resume only what fits.** With ``--resume`` the parameter names and shapes of the last
  checkpoint must be those of the configured model; otherwise the run is refused, naming
  the differing parameters, before ``config.yaml`` or anything else is written (detectron2
  would load what fits, overwrite ``config.yaml`` and fail later in the optimizer).

Only the main process checks, creates and locks; the result (the folder to use, or the
error) is shared with every rank, so all ranks stop with the same message or use the same
folder. ``--eval-only`` runs skip these checks: evaluating a folder's checkpoints is their
purpose.
"""
from __future__ import annotations

import glob
import os
import socket
from typing import Dict, List, Optional, Tuple

import portalocker
import torch
from detectron2.config import CfgNode
from detectron2.utils import comm

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "lock_output_dir",
    "prepare_output_dir",
    "previous_run_files",
    "release_output_dir",
    "resume_mismatches",
]

#: The lock file inside OUTPUT_DIR; it stays behind after a run, unlocked.
LOCK_NAME = "train.lock"
_EXAMPLES = 8

# folder (real path) -> open lock file held by this process until release or exit
_HELD: Dict[str, object] = {}


class OutputDirError(RuntimeError):
    """OUTPUT_DIR is in use, holds another run, or holds checkpoints of another model."""


def previous_run_files(output_dir: str) -> List[str]:
    """Names of the files in ``output_dir`` that a training run leaves behind (checkpoints,
    ``last_checkpoint``, ``metrics.json``), sorted; empty for a new or evaluation folder."""
    if not os.path.isdir(output_dir):
        return []
    names = {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(output_dir),
                                                                  "model_*.pth"))}
    names |= {n for n in ("last_checkpoint", "metrics.json")
              if os.path.isfile(os.path.join(output_dir, n))}
    return sorted(names)


def _holder(lock_file: str) -> str:
    try:
        with open(lock_file) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text or "another process"


def lock_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and hold its lock for this process (until
    :func:`release_output_dir` or the process ends); :class:`OutputDirError` naming the
    holder's pid when another process holds it. Taking a lock this process holds is a
    no-op."""
    os.makedirs(output_dir, exist_ok=True)
    key = os.path.realpath(output_dir)
    if key in _HELD:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
    except portalocker.exceptions.LockException:
        handle.close()
        raise OutputDirError(
            f"OUTPUT_DIR {output_dir} is in use by another training run ({_holder(path)}, "
            f"holding {path}). Wait for it to finish, stop it, or give this run another "
            "OUTPUT_DIR."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _HELD[key] = handle


def release_output_dir(output_dir: str) -> None:
    """Release the lock this process holds on ``output_dir`` (no-op without one)."""
    handle = _HELD.pop(os.path.realpath(output_dir), None)
    if handle is not None:
        portalocker.unlock(handle)
        handle.close()


def _next_run_subdir(output_dir: str) -> str:
    """Create and return the first ``output_dir/run_N`` (N = 1, 2, ...) that did not exist."""
    os.makedirs(output_dir, exist_ok=True)
    n = 1
    while True:
        candidate = os.path.join(output_dir, f"run_{n}")
        try:
            os.mkdir(candidate)  # atomic: two runs never get the same folder
            return candidate
        except FileExistsError:
            n += 1


def _last_checkpoint(output_dir: str) -> Optional[str]:
    pointer = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name)


def resume_mismatches(model_state: Dict[str, torch.Tensor],
                      checkpoint_state: Dict[str, torch.Tensor]) -> List[str]:
    """One line per parameter or buffer that differs between the model and the checkpoint
    to resume: missing, unexpected, or of another shape (with both shapes)."""
    from ..checkpoint.convert import strip_module_prefix

    def plain(state):  # DDP ("module.") and torch.compile ("_orig_mod.") wrappers
        return {strip_module_prefix(k).replace("_orig_mod.", ""): v for k, v in state.items()
                if not k.endswith("num_batches_tracked")}

    ours, theirs = plain(model_state), plain(checkpoint_state)
    lines = []
    for key in sorted(ours.keys() | theirs.keys()):
        if key not in theirs:
            lines.append(f"{key}: in the model {tuple(ours[key].shape)}, not in the checkpoint")
        elif key not in ours:
            lines.append(f"{key}: in the checkpoint {tuple(theirs[key].shape)}, not in the "
                         "model")
        elif tuple(ours[key].shape) != tuple(theirs[key].shape):
            lines.append(f"{key}: model {tuple(ours[key].shape)}, checkpoint "
                         f"{tuple(theirs[key].shape)}")
    return lines


def _check_resume(cfg: CfgNode, output_dir: str) -> None:
    """:class:`OutputDirError` when the last checkpoint in ``output_dir`` cannot be read or
    belongs to another model than ``cfg`` builds."""
    from detectron2.modeling import build_model

    path = _last_checkpoint(output_dir)
    if path is None:
        return  # nothing to resume: training starts from MODEL.WEIGHTS
    if not os.path.isfile(path):
        raise OutputDirError(
            f"--resume: {os.path.join(output_dir, 'last_checkpoint')} points to "
            f"{os.path.basename(path)}, which does not exist. Write the name of an existing "
            "model_*.pth into last_checkpoint, or start without --resume in another "
            "OUTPUT_DIR."
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = saved["model"]
    except Exception as e:  # noqa: BLE001 - any failure means "not resumable"
        raise OutputDirError(
            f"--resume: cannot read the last checkpoint {path} ({type(e).__name__}: {e}). "
            "Point last_checkpoint at an intact model_*.pth of this folder, or start without "
            "--resume in another OUTPUT_DIR."
        ) from None
    shapes_cfg = cfg.clone()
    shapes_cfg.defrost()
    shapes_cfg.MODEL.DEVICE = "cpu"  # names and shapes only; not on the accelerator
    with torch.random.fork_rng(devices=[]):  # the run's own seeding is left as it was
        model = build_model(shapes_cfg)
    mismatches = resume_mismatches(model.state_dict(), saved)
    del model
    if mismatches:
        shown = mismatches[:_EXAMPLES] + (["..."] if len(mismatches) > _EXAMPLES else [])
        raise OutputDirError(
            f"--resume: the configured model does not match the checkpoint {path}: "
            f"{len(mismatches)} parameters differ:\n  " + "\n  ".join(shown) + "\n"
            f"Resume with the config the run was started with ({output_dir}/config.yaml), "
            "or train the changed model in another OUTPUT_DIR (fine-tune from the old run "
            "with MODEL.WEIGHTS, without --resume). Nothing was written."
        )


def _claim(cfg: CfgNode, resume: bool, new_run_subdir: bool) -> str:
    """The main process's part of :func:`prepare_output_dir`; returns the folder to use."""
    output_dir = cfg.OUTPUT_DIR
    if not output_dir:
        raise OutputDirError("OUTPUT_DIR is empty: set it to the folder for this run's "
                             "checkpoints and logs, e.g. OUTPUT_DIR output/my_run.")
    if resume and new_run_subdir:
        raise OutputDirError("--resume continues the run in OUTPUT_DIR and --new-run-subdir "
                             "starts another one: give only one of them.")
    if os.path.isdir(output_dir):
        lock_output_dir(output_dir)  # also refuses while another run uses the folder
    found = previous_run_files(output_dir)
    if found and not resume:
        if new_run_subdir:
            release_output_dir(output_dir)
            output_dir = _next_run_subdir(output_dir)
        else:
            listed = ", ".join(found[:_EXAMPLES]) + (", ..." if len(found) > _EXAMPLES else "")
            raise OutputDirError(
                f"OUTPUT_DIR {output_dir} holds another training run ({listed}); a new run "
                "there would replace its checkpoints and mix its metrics with the old ones. "
                "Choose: --resume to continue that run; another OUTPUT_DIR; or "
                "--new-run-subdir to start afresh in a new subfolder run_N of it."
            )
    lock_output_dir(output_dir)
    if resume:
        _check_resume(cfg, output_dir)
    return output_dir


def prepare_output_dir(cfg: CfgNode, *, resume: bool, new_run_subdir: bool = False
                       ) -> str:
    """Check, create and lock ``cfg.OUTPUT_DIR`` for a training run (see the module doc) and
    return the folder the run writes to: ``cfg.OUTPUT_DIR`` itself, or with
    ``new_run_subdir`` a new ``OUTPUT_DIR/run_N`` when ``OUTPUT_DIR`` holds another run.

    Call it on every rank, after the process group is set up and before anything is
    written; every rank gets the same folder or the same :class:`OutputDirError`.
    """
    outcome: Tuple[Optional[str], Optional[str]]
    if comm.is_main_process():
        try:
            outcome = (_claim(cfg, resume, new_run_subdir), None)
        except OutputDirError as e:
            outcome = (None, str(e))
    else:
        outcome = (None, None)
    if comm.get_world_size() > 1:
        outcome = comm.all_gather(outcome)[0]  # the global main process's verdict
    output_dir, error = outcome
    if error is not None:
        raise OutputDirError(error)
    return output_dir
