"""Trainer hooks that feed training progress to the model."""
from __future__ import annotations

from detectron2.engine import HookBase
from torch import nn

__all__ = ["StepRateHook", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or similar ``.module``) wrapper."""
    while isinstance(model, nn.Module) and hasattr(model, "module"):
        model = model.module
    return model


class StepRateHook(HookBase):
    """Set ``model.step_rate = iter / max_iter`` before every training step.

    ``step_rate`` drives scheduled drop path and the budget loss's start and warm-up
    (``MODEL.BUDGET.UNUPDATE_RATE``, ``MODEL.BUDGET.WARM_UP``). It is set before each step
    rather than once, so a resumed run continues with the right value.
    """

    def before_step(self) -> None:
        model = unwrap_model(self.trainer.model)
        model.step_rate = self.trainer.iter / max(self.trainer.max_iter, 1)
