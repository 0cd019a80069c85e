"""A DetectionCheckpointer that is safe to load from, loud about partial weights and safe
to crash during saving.

* Loading never executes code from a file unless the caller opts in: ``.pth`` files load
  with ``torch.load(weights_only=True)``; pickled ``.pkl`` / ``.pyth`` files (which
  detectron2 would unpickle) are refused without ``allow_unsafe_pickle``.
* Partial weights are never silent (:meth:`DynSegCheckpointer.check_coverage`, the one place
  of this policy): for evaluation and prediction (``inference=True``) a missing or
  wrongly shaped parameter, or no weights at all, is an error naming how many and which
  parts (backbone / gates / head); for training (fine-tuning) they are listed as a warning,
  but a checkpoint that covers less than half of the model is an error.
  ``allow_partial_weights=True`` turns these errors into warnings.
* Checkpoints of the reference implementation (``backbone.all_cell_list...`` names) are
  converted on the fly; a backbone layer that would stay at its random initialisation
  (unmapped or missing backbone keys) is an error naming the keys.
* URLs are downloaded through detectron2's path manager; when that fails (offline, wrong
  URL) the error says so in one line and no stale lock file is left in the cache.
* Saving is atomic: the checkpoint is written through the path manager to a temporary
  file beside the final name, flushed to disk and moved over it; ``last_checkpoint`` is
  replaced the same way after it. A crash at any moment leaves either the old or the new
  complete state. Files get the usual permissions (``0666`` minus the umask).
* A missing, truncated or foreign file fails with an error whose last line names the file.
"""
from __future__ import annotations

import logging
import os
import pickle
import uuid
import zipfile
from typing import Any, Dict, List, Mapping, Tuple
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .convert import (
    convert_reference_state_dict,
    describe_parts,
    parameter_part,
    strip_module_prefix,
)

logger = logging.getLogger(__name__)

UNSAFE_SUFFIXES = (".pkl", ".pyth")
REFERENCE_MARKERS = ("all_cell_list", "init_layer", "layer_decoder_list", "gate_conv_beta",
                     "gate_weights_beta")
# Training refuses a checkpoint that provides less than this share of the model's values.
MIN_TRAINING_COVERAGE = 0.5
_NOT_WEIGHTS = ("num_batches_tracked",)  # BN counters: no effect on the computation
_EXAMPLES = 8


class CheckpointError(RuntimeError):
    """A weights file that cannot be used; the message's last line names the file."""


def _is_local(path: str) -> bool:
    return "://" not in path


def _atomic_write(path_manager, path: str, write_fn) -> None:
    """Write through ``write_fn(fileobj)`` into a temporary file beside ``path``, then move
    it over ``path``. Local files are flushed to disk before the move; the temporary file is
    created by the path manager's ``open`` as any output is (permissions follow the umask)."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with path_manager.open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            if _is_local(path) and hasattr(f, "fileno"):
                os.fsync(f.fileno())
        if _is_local(path):
            os.replace(tmp, path)  # atomic on POSIX, also over an existing file
        else:
            path_manager.mv(tmp, path)
    except BaseException:
        try:
            if path_manager.exists(tmp):
                path_manager.rm(tmp)
        except Exception:  # the original error matters more
            pass
        raise


class DynSegCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with safe loading, the partial-weights policy, atomic
    saving and reference conversion.

    Args:
        allow_unsafe_pickle: unpickle ``.pkl`` / non-tensor content (runs code from the file).
        inference: the weights are for evaluation or prediction: every parameter must come
            from the checkpoint, and a path must be given.
        allow_partial_weights: report missing / mismatched parameters as a warning only.
    """

    def __init__(self, model, save_dir: str = "", *, allow_unsafe_pickle: bool = False,
                 inference: bool = False, allow_partial_weights: bool = False,
                 save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.inference = inference
        self.allow_partial_weights = allow_partial_weights

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
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(self.path_manager, save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(self.path_manager, path,
                      lambda f: f.write(last_filename_basename.encode()))

    # --------------------------------------------------------------- loading
    def load(self, path: str, *args, **kwargs):
        if not path:
            if self.inference and not self.allow_partial_weights:
                raise CheckpointError(
                    "No weights given (MODEL.WEIGHTS is empty): evaluating or predicting with a "
                    "randomly initialised network gives meaningless results. Set MODEL.WEIGHTS "
                    "to a trained checkpoint, or pass --allow-partial-weights "
                    "(allow_partial_weights=True) to run the untrained network on purpose.\n"
                    "MODEL.WEIGHTS"
                )
            if self.inference:
                logger.warning("No weights given: running the randomly initialised network.")
                return {}
        elif not _is_local(path):
            path = self._fetch(path)
        elif not os.path.isfile(path):
            raise CheckpointError(f"Weights file not found:\n{path}")
        return super().load(path, *args, **kwargs)

    def _fetch(self, url: str) -> str:
        """Download ``url`` into the path manager's cache; one clear error when that fails."""
        from iopath.common.file_io import get_cache_dir

        parsed = urlparse(url)
        cached = os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")),
                              url.split("/")[-1])
        try:
            return self.path_manager.get_local_path(parsed._replace(query="").geturl())
        except Exception as e:  # URLError, HTTPError, socket errors, empty downloads ...
            # iopath's download lock "<cached>.lock" would stay behind in the cache.
            if os.path.exists(cached + ".lock") and not os.path.exists(cached):
                try:
                    os.remove(cached + ".lock")
                except OSError:
                    pass
            reason = getattr(e, "reason", None) or e
            raise CheckpointError(
                f"Cannot download the weights ({type(e).__name__}: {reason}). Check the "
                "network connection and the URL, or download the file elsewhere and set "
                "MODEL.WEIGHTS to its local path.\n"
                f"{url}"
            ) from None

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
        target = self.model.state_dict()
        state = {strip_module_prefix(k): v for k, v in checkpoint["model"].items()}
        self._convert_ndarray_to_tensor(state)
        if any(m in k for k in state for m in REFERENCE_MARKERS):
            logger.info(f"Converting reference-implementation parameter names from {source}")
            state, report = convert_reference_state_dict(state, target)
            self._check_reference_conversion(report, source)
        own = set(target)
        if own and not own.intersection(state):
            raise CheckpointError(
                "None of the model's parameters is in this checkpoint: it belongs to another "
                "model. For checkpoints of the reference implementation use "
                "tools/convert_reference_checkpoint.py.\n"
                f"{source}"
            )
        self.check_coverage(state, target, source)
        checkpoint["model"] = state
        return super()._load_model(checkpoint)

    def _check_reference_conversion(self, report, source: str) -> None:
        if report.dropped:
            logger.info(f"Dropped {len(report.dropped)} constant gate_weights_beta buffers "
                        "of a Network-Fix checkpoint.")
        if report.not_segmentation:
            logger.warning(
                f"{len(report.not_segmentation)} keys of {source} are not part of a "
                "segmentation model (e.g. a classification head) and are left out: "
                + ", ".join(report.not_segmentation[:_EXAMPLES])
            )
        backbone = report.unmapped_backbone + report.missing_backbone
        if backbone and not self.allow_partial_weights:
            raise CheckpointError(
                "This reference checkpoint does not fit the backbone of the configured "
                f"network: {len(backbone)} backbone keys have no counterpart, so those layers "
                "would stay at their random initialisation:\n  "
                + "\n  ".join(backbone[:_EXAMPLES * 4])
                + ("\n  ..." if len(backbone) > _EXAMPLES * 4 else "")
                + "\nMake the config describe the checkpoint's network (LAYER_NUM, "
                "INIT_CHANNEL, CELL_TYPE, NORM, ...), or pass --allow-partial-weights "
                "(allow_partial_weights=True).\n"
                f"{source}"
            )
        if report.unmapped or report.shape_mismatch:
            logger.warning(report.summary())

    def check_coverage(self, state: Mapping[str, torch.Tensor],
                       target: Mapping[str, torch.Tensor], source: str) -> None:
        """The partial-weights policy (see the class doc): raise :class:`CheckpointError`
        or warn when ``state`` does not give every parameter of ``target`` a value."""
        absent, total_values, covered_values = _coverage(state, target)
        if not absent:
            return
        n_weights = sum(1 for k in target if not k.endswith(_NOT_WEIGHTS))
        share = covered_values / max(total_values, 1)

        def what(limit: int) -> str:
            listed = absent if len(absent) <= limit else absent[:limit] + ["..."]
            return (
                f"{len(absent)} of the model's {n_weights} parameters are missing from the "
                f"checkpoint or have another shape there ({describe_parts(absent)}); it "
                f"covers {100 * share:.0f}% of the model's values:\n  " + "\n  ".join(listed)
            )

        fix = ("Use the config the checkpoint was trained with (LAYER_NUM, INIT_CHANNEL, "
               "NUM_CLASSES, GATE, ...), or pass --allow-partial-weights "
               "(allow_partial_weights=True) to run with those parameters at their random "
               "initialisation.")
        if self.allow_partial_weights:
            logger.warning(what(len(absent)))
        elif self.inference:
            raise CheckpointError(
                "Refusing to evaluate or predict with partly random weights: "
                f"{what(_EXAMPLES)}\n{fix}\n{source}"
            )
        elif share < MIN_TRAINING_COVERAGE:
            raise CheckpointError(
                f"The checkpoint matches less than {100 * MIN_TRAINING_COVERAGE:.0f}% of the "
                f"model, so it is most likely for another network: {what(_EXAMPLES)}\n"
                f"{fix}\n{source}"
            )
        else:
            parts = {parameter_part(k) for k in absent}
            logger.warning(f"Fine-tuning from a partial checkpoint ({', '.join(sorted(parts))} "
                           f"start from their initial values): {what(len(absent))}")


def _coverage(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
              ) -> Tuple[List[str], int, int]:
    """(parameters of ``target`` that ``state`` lacks or shapes differently, number of
    values of ``target``, number of them ``state`` provides)."""
    absent, total, covered = [], 0, 0
    for key, value in target.items():
        if key.endswith(_NOT_WEIGHTS):
            continue
        total += value.numel()
        given = state.get(key)
        if isinstance(given, torch.Tensor) and tuple(given.shape) == tuple(value.shape):
            covered += value.numel()
        else:
            absent.append(key)
    return absent, total, covered
