"""torch.compile of the static stretches (``MODEL.FAST.COMPILE``, ``TRAIN_COMPILE``).

Between two gate decisions the network is static: the stem, a cell's operations, each
transition, the gates' convolutions and the decoder. Those modules are compiled one by
one; the routing between them stays in Python. Modules of the same class and shapes
share one compiled graph (cells at the same scale), sub-batches of other sizes compile
once more (with dynamic batch sizes after the first recompilation).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["compile_forward"]


def compile_forward(module: nn.Module, backend: str, mode: str = "default") -> nn.Module:
    """Compile ``module.forward`` in place with ``backend`` ("" leaves it eager).

    The module keeps its class and state-dict keys. ``mode`` (CUDA graphs with
    "reduce-overhead", autotuning with "max-autotune") applies to the inductor backend.
    Returns ``module``.
    """
    if not backend:
        return module
    kwargs = {"backend": backend}
    if backend == "inductor":
        kwargs["mode"] = mode
    module.forward = torch.compile(module.forward, **kwargs)
    return module
