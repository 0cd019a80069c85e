"""Faster training steps: channels_last, bf16 autocast and compiled static modules.

Training keeps the faithful modules (every path is computed, gradients reach the gates);
these switches change only how the same computation runs:

* ``channels_last``: conv weights in NHWC, so convolutions run NHWC (faster depthwise and
  1x1 convolutions on CPU and tensor cores).
* ``bf16``: autocast to bfloat16 around the forward pass (activations take half the
  memory; the losses are computed in float32). Faster only where the hardware has
  bfloat16 units (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX).
* ``compile``: torch.compile of the static modules (stem, every cell's operations, gate
  and transitions, the decoder). The routing between them stays eager, so a changing
  ``step_rate`` or drop-path draw never triggers recompilation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .compile import compile_forward

__all__ = ["TrainingOptions", "prepare_for_training", "training_autocast"]


@dataclass(frozen=True)
class TrainingOptions:
    """``MODEL.FAST.TRAIN_*``: see the module docstring."""

    channels_last: bool = False
    bf16: bool = False
    compile: str = ""
    compile_mode: str = "default"

    @classmethod
    def from_config(cls, cfg) -> TrainingOptions:
        f = cfg.MODEL.FAST
        return cls(f.TRAIN_CHANNELS_LAST, f.TRAIN_BF16, f.TRAIN_COMPILE, f.COMPILE_MODE)


def prepare_for_training(model: nn.Module, options: TrainingOptions) -> nn.Module:
    """Apply ``channels_last``, ``bf16`` and ``compile`` to a DynamicSemanticSegmentor in
    place (``bf16``: its training forward passes then run under bfloat16 autocast).

    State-dict keys stay the same (each module's forward is compiled in place). Returns
    ``model``.
    """
    if hasattr(model, "train_bf16"):
        model.train_bf16 = options.bf16
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.compile:
        backbone = model.backbone
        static = [backbone.stem, model.sem_seg_head]
        for cell in backbone.all_cells():
            static += list(cell.ops) + [m for m in (cell.gate, cell.up, cell.down) if m is not None]
        for module in static:
            compile_forward(module, options.compile, options.compile_mode)
    return model


def training_autocast(options: TrainingOptions, device: torch.device):
    """The autocast context of a training step (a no-op context without ``bf16``)."""
    if not options.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
