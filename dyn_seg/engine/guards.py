"""Stop training on NaN or infinite numbers, naming the iteration and the checkpoint to
resume from.

Two guards, one per way a run goes bad:

* a non-finite **loss**: the trainer's step (:class:`NonFiniteLossCheck`, before the
  optimizer step, where detectron2's ``SimpleTrainer`` would raise a bare
  ``FloatingPointError`` naming neither a checkpoint nor a remedy) raises
  :class:`NonFiniteLossError` carrying the loss values; :func:`explain_non_finite_loss` (the
  trainer's ``run_step`` runs inside it) re-raises it as :class:`NonFiniteTrainingError`
  naming the iteration and the last good checkpoint.
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
from typing import Dict, Iterator, Mapping, Optional

import torch
from detectron2.engine import HookBase, hooks
from torch import nn

from .d2_internals import BeforeWriteMetrics
from .hooks import unwrap_model

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossCheck",
    "NonFiniteLossError",
    "NonFiniteTrainingError",
    "explain_non_finite_loss",
    "first_non_finite_tensor",
    "last_checkpoint_file",
]


class NonFiniteTrainingError(FloatingPointError):
    """Training stopped on a NaN or infinite loss or weight; the message names the iteration
    and the last good checkpoint."""


class NonFiniteLossError(FloatingPointError):
    """A training step's loss is NaN or infinite; ``losses`` holds every loss term's value."""

    def __init__(self, losses: Dict[str, float]):
        super().__init__(f"the loss is NaN or infinite ({losses})")
        self.losses = losses


class NonFiniteLossCheck(BeforeWriteMetrics):
    """Mixin for detectron2's ``SimpleTrainer`` / ``AMPTrainer``: before a step's metrics are
    written (and before its optimizer step), raise :class:`NonFiniteLossError` with the loss
    values when their sum is not finite."""

    def before_write_metrics(self, loss_dict: Mapping) -> None:
        values = {k: v.detach() for k, v in loss_dict.items()}
        if values and not bool(torch.isfinite(sum(v.float() for v in values.values())).all()):
            raise NonFiniteLossError({k: float(v.float().mean()) for k, v in values.items()})


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
    """Run a training step; turn a :class:`NonFiniteLossError` into
    :class:`NonFiniteTrainingError` naming the loss values, ``trainer.iter`` and the last
    good checkpoint of ``trainer.checkpointer``."""
    try:
        yield
    except NonFiniteLossError as e:
        checkpoint = last_checkpoint_file(getattr(trainer, "checkpointer", None))
        raise NonFiniteTrainingError(
            _stop_message(f"the loss is NaN or infinite ({e.losses})", trainer.iter, checkpoint)
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
