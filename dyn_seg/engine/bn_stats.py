"""Batch-norm statistics passes (precise BN, BN re-calibration) with drop path off.

The reference gathers precise-BN statistics with ``step_rate`` 0, so scheduled drop path
(keep = 1 - step_rate * layer_rate * DROP_PROB) is inactive during the pass. Without that,
statistics gathered at the end of a drop-path run would see operations dropped at nearly
full strength and differ from seed to seed. :func:`recompute_bn_stats` is the one place
that implements this rule; the precise-BN hook and the tools' re-calibration use it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional

from detectron2.engine import hooks
from detectron2.utils.events import EventStorage
from fvcore.nn.precise_bn import update_bn_stats
from torch import nn

from dyn_seg.modeling.meta_arch.routed import RoutedModel

from .hooks import unwrap_model

__all__ = ["PreciseBNWithoutDropPath", "drop_path_off", "recompute_bn_stats"]


@contextlib.contextmanager
def drop_path_off(model: nn.Module) -> Iterator[None]:
    """Run the body with the model's ``step_rate`` (and its backbone's) at 0, so scheduled
    drop path keeps every operation; restore both values afterwards, also on error.

    ``model`` may be wrapped (``DistributedDataParallel``); a model that is not a routed
    model (:class:`~dyn_seg.modeling.meta_arch.routed.RoutedModel`) is left alone.
    """
    inner = unwrap_model(model)
    holders = [inner, inner.routed_network] if isinstance(inner, RoutedModel) else []
    saved = [m.step_rate for m in holders]
    try:
        for m in holders:
            m.step_rate = 0.0
        yield
    finally:
        for m, value in zip(holders, saved):
            m.step_rate = value


class _Forward(nn.Module):
    """``model``'s norms behind a custom forward, for fvcore's ``update_bn_stats`` (which
    calls a module on each batch and finds the norms among its submodules)."""

    def __init__(self, model: nn.Module, forward: Callable):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch):
        return self._forward(batch)


def recompute_bn_stats(model: nn.Module, data_iter: Iterable, num_iters: int,
                       forward: Optional[Callable] = None) -> None:
    """Recompute the running statistics of every batch norm of ``model`` (in train mode)
    as the true average over ``num_iters`` batches from ``data_iter``, with drop path off.

    ``forward`` (default: ``model`` itself) runs one batch through the part of ``model``
    that holds the norms, e.g. the backbone and head on an image tensor. fvcore's
    ``update_bn_stats`` does the averaging; ``step_rate`` is 0 during the pass and restored
    afterwards (:func:`drop_path_off`).
    """
    runner = model if forward is None else _Forward(model, forward)
    with drop_path_off(model):
        update_bn_stats(runner, data_iter, num_iters)


class PreciseBNWithoutDropPath(hooks.PreciseBN):
    """detectron2's ``PreciseBN`` hook whose statistics pass is :func:`recompute_bn_stats`
    (drop path off; ``step_rate`` restored for the next training step)."""

    def update_stats(self) -> None:
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)
        self._logger.info(f"Running precise-BN for {self._num_iter} iterations (drop path off)")
        # a storage of its own: the forward passes log routing statistics, which must not
        # reach the training's metrics
        with EventStorage():
            recompute_bn_stats(self._model, self._data_iter, self._num_iter)
