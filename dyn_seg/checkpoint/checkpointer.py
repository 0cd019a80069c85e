"""A DetectionCheckpointer that is safe to load from and to crash during saving.

* Loading never executes code from a file unless the caller opts in: ``.pth`` files load
  with ``torch.load(weights_only=True)``; pickled ``.pkl`` / ``.pyth`` files (which
  detectron2 would unpickle) are refused without ``allow_unsafe_pickle``.
* Saving is atomic: the checkpoint is written to a temporary file in the same folder,
  flushed to disk and renamed over the final name; ``last_checkpoint`` is replaced the
  same way after it. A crash at any moment leaves either the old or the new complete state.
* A missing, truncated or foreign file fails with an error whose last line names the file.
* Checkpoints of the reference implementation (``backbone.all_cell_list...`` names) are
  converted on the fly.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .convert import convert_reference_state_dict

logger = logging.getLogger(__name__)

UNSAFE_SUFFIXES = (".pkl", ".pyth")
REFERENCE_MARKERS = ("all_cell_list", "init_layer", "layer_decoder_list", "gate_conv_beta")


class CheckpointError(RuntimeError):
    """A weights file that cannot be used; the message's last line names the file."""


def _atomic_write(path: str, write_fn) -> None:
    """Write through ``write_fn(fileobj)`` into a temp file beside ``path``, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class DynSegCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with safe loading, atomic saving and reference conversion."""

    def __init__(self, model, save_dir: str = "", *, allow_unsafe_pickle: bool = False,
                 save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe_pickle = allow_unsafe_pickle

    # ---------------------------------------------------------------- saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    # --------------------------------------------------------------- loading
    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"Weights file not found:\n{path}")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(UNSAFE_SUFFIXES) and not self.allow_unsafe_pickle:
            raise CheckpointError(
                "Refusing to unpickle a .pkl/.pyth weights file: unpickling can run arbitrary "
                "code. Convert it to a .pth state dict, or, if you trust its source, pass "
                "allow_unsafe_pickle=True (train_net.py: --allow-unsafe-pickle).\n"
                f"{filename}"
            )
        try:
            loaded = super()._load_file(filename)
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError,
                ValueError, AttributeError, OSError) as e:  # torch's zip reader: OSError
            hint = (
                "it needs code to unpickle; pass allow_unsafe_pickle=True only if you trust it"
                if "weights_only" in str(e) or "WeightsUnpickler" in str(e)
                else "the file is truncated, corrupt or not a PyTorch checkpoint"
            )
            raise CheckpointError(f"Cannot read weights ({hint}): {e}\n{filename}") from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(f"Not a model checkpoint (no state dict inside):\n{filename}")
        loaded["__source_file__"] = filename
        return loaded

    def _torch_load(self, f: str):
        return torch.load(f, map_location=torch.device("cpu"),
                          weights_only=not self.allow_unsafe_pickle)

    def _load_model(self, checkpoint: Dict[str, Any]):
        source = checkpoint.pop("__source_file__", "<memory>")
        state = checkpoint["model"]
        if any(m in k for k in state for m in REFERENCE_MARKERS):
            logger.info(f"Converting reference-implementation parameter names from {source}")
            state, report = convert_reference_state_dict(state, self.model.state_dict())
            if report.unmapped:
                logger.warning(report.summary())
            checkpoint["model"] = state
        own = set(self.model.state_dict())
        found = own.intersection(k.replace("module.", "", 1) if k.startswith("module.") else k
                                 for k in checkpoint["model"])
        if own and not found:
            raise CheckpointError(
                "None of the model's parameters is in this checkpoint: it belongs to another "
                "model. For checkpoints of the reference implementation use "
                "tools/convert_reference_checkpoint.py.\n"
                f"{source}"
            )
        return super()._load_model(checkpoint)
