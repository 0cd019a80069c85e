"""Every place dyn_seg relies on detectron2 internals (no public builder or hook exists).

Checked against detectron2 0.7.2 (``detectron2/engine/defaults.py``,
``detectron2/engine/train_loop.py``, ``detectron2/engine/hooks.py``); when upgrading
detectron2, re-read those and this module first.

* :func:`building_with` – ``DefaultTrainer.__init__`` wraps the model with the module-level
  ``detectron2.engine.defaults.create_ddp_model`` (no ``build_*`` method to override):
  the name is replaced for the duration of the construction.
* :func:`replace_step` – ``DefaultTrainer`` keeps its ``SimpleTrainer`` / ``AMPTrainer``
  in the private ``_trainer`` attribute (no builder for it either).
* :func:`precise_bn_settings` – ``hooks.PreciseBN`` keeps its settings in private
  attributes (``_period``, ``_model``, ``_data_loader``, ``_num_iter``).
* :class:`BeforeWriteMetrics` – ``SimpleTrainer.run_step`` calls the private
  ``_write_metrics(loss_dict, data_time, prefix, iter)`` after the forward and before the
  optimizer step: the one point where a step's losses can be checked before the update.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Optional, Tuple

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import hooks

__all__ = ["BeforeWriteMetrics", "building_with", "precise_bn_settings", "replace_step"]

DETECTRON2_VERSION_CHECKED = "0.7.2"


@contextlib.contextmanager
def building_with(create_ddp_model: Callable) -> Iterator[None]:
    """Inside the body, ``DefaultTrainer.__init__`` wraps models with ``create_ddp_model``."""
    saved = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = saved


def replace_step(trainer, make_step: Callable) -> None:
    """Replace the ``DefaultTrainer``'s step object by ``make_step(old_step)`` (call before
    the hooks are built: they capture it)."""
    trainer._trainer = make_step(trainer._trainer)


def precise_bn_settings(hook: hooks.PreciseBN) -> Tuple[int, object, object, int]:
    """``(period, model, data_loader, num_iter)`` of a ``PreciseBN`` hook."""
    return hook._period, hook._model, hook._data_loader, hook._num_iter


class BeforeWriteMetrics:
    """Mixin for ``SimpleTrainer`` / ``AMPTrainer``: :meth:`before_write_metrics` sees each
    step's losses before its metrics are written and before its optimizer step."""

    def before_write_metrics(self, loss_dict: Mapping) -> None:
        """Override: raise to stop the step."""

    def _write_metrics(self, loss_dict: Mapping, data_time: float, prefix: str = "",
                       iter: Optional[int] = None) -> None:
        self.before_write_metrics(loss_dict)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)
