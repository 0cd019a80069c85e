"""Optimizer and learning-rate schedule of the paper's recipe, built from ``SOLVER.*``.

* SGD with momentum (or Adam for ``SOLVER.OPTIMIZER = "ADAM"``, Panoptic-DeepLab's
  choice); no weight decay on norm parameters (``SOLVER.WEIGHT_DECAY_NORM``);
  parameters whose name contains ``"gate"`` train at ``SOLVER.GATE_LR_MULTI`` times the LR.
* Gradient clipping: detectron2's per-parameter ``"value"`` / ``"norm"`` clipping, plus
  ``"full_model"``: one global norm over all parameters (the paper clips it at 5.0).
* ``SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"``: detectron2 DeepLab's ``WarmupPolyLR``
  (linear warm-up from ``WARMUP_FACTOR`` times a poly decay,
  ``lr = BASE_LR * warmup(iter) * (1 - iter / MAX_ITER) ** POLY_LR_POWER``), as
  Panoptic-DeepLab uses it; every other name goes to detectron2's builder.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Type

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR
from detectron2.solver import LRScheduler, get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = [
    "CLIP_TYPES",
    "OPTIMIZERS",
    "ResumableWarmupPolyLR",
    "build_lr_scheduler",
    "build_optimizer",
    "is_gate_parameter",
    "scale_gate_lr",
    "with_full_model_gradient_clipping",
]

#: Allowed ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` values.
CLIP_TYPES = ("full_model", "norm", "value")
#: Allowed ``SOLVER.OPTIMIZER`` values.
OPTIMIZERS = ("SGD", "ADAM")


def is_gate_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` (as in ``named_parameters()``) belongs to a gate."""
    return "gate" in name


def scale_gate_lr(
    model: torch.nn.Module, param_groups: List[Dict[str, Any]], multiplier: float
) -> List[Dict[str, Any]]:
    """Split each optimizer group into its gate and other parameters and multiply the gate
    part's ``lr`` by ``multiplier`` (other settings of the group are kept)."""
    if multiplier == 1.0:
        return param_groups
    gate_ids = {id(p) for name, p in model.named_parameters() if is_gate_parameter(name)}
    groups = []
    for group in param_groups:
        gate = [p for p in group["params"] if id(p) in gate_ids]
        other = [p for p in group["params"] if id(p) not in gate_ids]
        if other:
            groups.append({**group, "params": other})
        if gate:
            groups.append({**group, "params": gate, "lr": group["lr"] * multiplier})
    return groups


def with_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step()`` first clips the gradients of all its
    parameters together to a global ``norm_type``-norm of at most ``max_norm``."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = itertools.chain(*(group["params"] for group in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = optimizer_type.__name__ + "WithFullModelGradientClip"
    FullModelGradientClipping.__qualname__ = FullModelGradientClipping.__name__
    return FullModelGradientClipping


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (or Adam) over ``model``'s parameters with the paper's per-group settings and
    clipping."""
    name = str(cfg.SOLVER.OPTIMIZER).upper()
    if name not in OPTIMIZERS:
        raise ValueError(
            f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not allowed: use one of "
            f"{OPTIMIZERS} ('SGD' is the paper's recipe, 'ADAM' Panoptic-DeepLab's)."
        )
    if cfg.SOLVER.BASE_LR < 0:
        raise ValueError(f"SOLVER.BASE_LR={cfg.SOLVER.BASE_LR} is not allowed: the learning "
                         "rate must be >= 0 (the paper uses 0.05 for 8 GPUs x 4 images).")
    if cfg.SOLVER.GATE_LR_MULTI <= 0:
        raise ValueError(
            f"SOLVER.GATE_LR_MULTI={cfg.SOLVER.GATE_LR_MULTI} is not allowed: it must be > 0 "
            "(1.0 trains the gates at the base LR, the paper uses 2.5)."
        )
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r} is not allowed: use one of "
            f"{CLIP_TYPES} ('full_model' clips the global norm over all parameters)."
        )
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    params = scale_gate_lr(model, params, cfg.SOLVER.GATE_LR_MULTI)
    optimizer_type: Type[torch.optim.Optimizer] = (
        torch.optim.SGD if name == "SGD" else torch.optim.Adam)
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = with_full_model_gradient_clipping(
            optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    if name == "ADAM":
        return optimizer_type(params, lr=cfg.SOLVER.BASE_LR,
                              weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    return optimizer_type(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


class ResumableWarmupPolyLR(WarmupPolyLR):
    """detectron2 DeepLab's ``WarmupPolyLR`` whose schedule always comes from the config.

    Its ``state_dict`` holds every attribute, so loading a checkpoint would also restore the
    old ``max_iters`` (and warm-up / power): a run resumed with a longer ``SOLVER.MAX_ITER``
    would then go past the old end and fail. Here a checkpoint restores only the progress
    (``last_epoch``, the base and last LRs), as detectron2's ``LRMultiplier`` does.
    """

    SCHEDULE_KEYS = ("max_iters", "warmup_factor", "warmup_iters", "warmup_method", "power",
                     "constant_ending")

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(
            {k: v for k, v in state_dict.items() if k not in self.SCHEDULE_KEYS}
        )


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """detectron2 DeepLab's ``WarmupPolyLR`` for ``SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"``
    (``SOLVER.POLY_LR_POWER``, ``SOLVER.POLY_LR_CONSTANT_ENDING``, ``SOLVER.WARMUP_*``; built
    with the same arguments as DeepLab's ``build_lr_scheduler``, resumable with a new
    ``MAX_ITER``: :class:`ResumableWarmupPolyLR`), DeepLab's builder (i.e. detectron2's)
    otherwise.

    Values that the library would accept silently but that cannot give a schedule are
    rejected with the key named.
    """
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_deeplab_lr_scheduler(cfg, optimizer)
    if s.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER={s.MAX_ITER} is not allowed: it must be > 0.")
    if s.WARMUP_METHOD not in ("linear", "constant"):
        raise ValueError(
            f"SOLVER.WARMUP_METHOD={s.WARMUP_METHOD!r} is not allowed with WarmupPolyLR: "
            "use 'linear' or 'constant'."
        )
    if s.POLY_LR_POWER < 0:
        raise ValueError(f"SOLVER.POLY_LR_POWER={s.POLY_LR_POWER} is not allowed: it must be >= 0.")
    return ResumableWarmupPolyLR(
        optimizer,
        s.MAX_ITER,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_iters=s.WARMUP_ITERS,
        warmup_method=s.WARMUP_METHOD,
        power=s.POLY_LR_POWER,
        constant_ending=s.POLY_LR_CONSTANT_ENDING,
    )
