"""Stop training on NaN or infinite numbers, naming the iteration and the checkpoint to
resume from.

Two guards, one per way a run goes bad:

* a non-finite **loss**: detectron2's ``SimpleTrainer`` raises ``FloatingPointError`` for
  it before the optimizer step, but its message names neither a checkpoint nor a remedy.
  :func:`explain_non_finite_loss` (the trainer's ``run_step`` runs inside it) re-raises it
  as :class:`NonFiniteTrainingError` naming the iteration and the last good checkpoint.
* non-finite **weights** after an optimizer step whose loss was still finite (e.g. an
  overflowing update): :class:`NonFiniteGuard`, a hook placed before the
  ``PeriodicCheckpointer``, checks the weights on the iterations where a checkpoint is
  due and stops training instead of writing NaN weights into a checkpoint.

Either way, the last checkpoint on disk holds finite weights, and ``--resume`` continues
from it.
"""
from __future__ import annotations

import contextlib
import itertools
import re
from typing import Iterator, Optional

import torch
from detectron2.engine import HookBase, hooks
from torch import nn

from .hooks import unwrap_model

__all__ = [
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "explain_non_finite_loss",
    "first_non_finite_tensor",
    "last_checkpoint_file",
]


class NonFiniteTrainingError(FloatingPointError):
    """Training stopped on a NaN or infinite loss or weight; the message names the iteration
    and the last good checkpoint."""


def last_checkpoint_file(checkpointer) -> Optional[str]:
    """The file ``last_checkpoint`` points to in the checkpointer's folder, or None."""
    if checkpointer is None or not checkpointer.save_dir or not checkpointer.has_checkpoint():
        return None
    return checkpointer.get_checkpoint_file()


def _stop_message(what: str, iteration: int, checkpoint: Optional[str]) -> str:
    if checkpoint is None:
        resume = ("No checkpoint had been written yet, so training must start again (lower "
                  "SOLVER.BASE_LR, raise SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS).")
    else:
        resume = (f"The last good checkpoint is {checkpoint}; nothing was saved after it. "
                  "Continue from it with --resume after lowering SOLVER.BASE_LR, enabling "
                  "SOLVER.CLIP_GRADIENTS or fixing the data.")
    return f"Training stopped at iteration {iteration}: {what}. {resume}"


@contextlib.contextmanager
def explain_non_finite_loss(trainer) -> Iterator[None]:
    """Run a training step; turn detectron2's ``FloatingPointError`` for a NaN/Inf loss into
    :class:`NonFiniteTrainingError` naming ``trainer.iter`` and the last good checkpoint of
    ``trainer.checkpointer``."""
    try:
        yield
    except NonFiniteTrainingError:
        raise
    except FloatingPointError as e:
        # detectron2: "Loss became infinite or NaN at iteration=I!\nloss_dict = {...}"
        text = str(e)
        detail = text.split("loss_dict = ", 1)[1] if "loss_dict = " in text else text
        detail = re.sub(r"np\.float\d+\(([^)]*)\)", r"\1", detail)  # numpy 2 scalar reprs
        checkpoint = last_checkpoint_file(getattr(trainer, "checkpointer", None))
        raise NonFiniteTrainingError(
            _stop_message(f"the loss is NaN or infinite ({detail.strip()})", trainer.iter,
                          checkpoint)
        ) from e


def first_non_finite_tensor(model: nn.Module) -> Optional[str]:
    """Name of the first floating-point parameter or buffer of ``model`` that holds a NaN or
    infinity, or None when all are finite (one host synchronisation when they are)."""
    tensors = [
        (name, t) for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
        if t.is_floating_point()
    ]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


class NonFiniteGuard(HookBase):
    """Refuse to checkpoint NaN or infinite weights.

    On each iteration where the trainer's ``PeriodicCheckpointer`` hook will save, check
    every floating-point parameter and buffer first; if one is not finite, raise
    :class:`NonFiniteTrainingError` naming it, the iteration and the last good checkpoint.
    Register it before the ``PeriodicCheckpointer`` (hooks run in order). Ranks without a
    checkpointer hook check nothing.
    """

    def before_train(self) -> None:
        self._checkpointer_hook = next(
            (h for h in self.trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)), None
        )

    def _checkpoint_due(self, iteration: int) -> bool:
        hook = self._checkpointer_hook
        if hook is None:
            return False
        max_iter = self.trainer.max_iter
        return (iteration + 1) % hook.period == 0 or iteration >= max_iter - 1

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if not self._checkpoint_due(iteration):
            return
        name = first_non_finite_tensor(unwrap_model(self.trainer.model))
        if name is not None:
            raise NonFiniteTrainingError(
                _stop_message(
                    f"the weights hold NaN or infinite values after the optimizer step "
                    f"(first: {name}), so no checkpoint is written for this iteration",
                    iteration,
                    last_checkpoint_file(self.trainer.checkpointer),
                )
            )
