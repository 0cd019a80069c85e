"""Training switches of a routed model (``MODEL.FAST.TRAIN_*``), applied in place."""
from __future__ import annotations

import torch
from torch import nn

from ..network.transforms import TrainingOptions, compile_modules, static_modules
from .routed import routed_model

__all__ = ["prepare_for_training"]


def prepare_for_training(model: nn.Module, cfg) -> nn.Module:
    """Apply ``MODEL.FAST.TRAIN_*`` to a routed model in place.

    ``cfg``: a config or :class:`TrainingOptions`. channels_last converts the weights
    (convolutions then run NHWC); compile with scope "modules" compiles the routed network's
    static modules (stem, operations, gates, transitions) and the model's
    :meth:`~dyn_seg.modeling.meta_arch.routed.RoutedModel.compiled_heads`, so that a changing
    ``step_rate`` or drop-path draw never recompiles; with scope "network" the routed
    network's forward pass is one graph (``fullgraph=True``: the faithful plan has no host
    decision). checkpoint recomputes each cell in the backward pass. State-dict keys stay
    the same. Returns ``model``.
    """
    options = cfg if isinstance(cfg, TrainingOptions) else TrainingOptions.from_config(cfg)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    routed = routed_model(model)
    network = routed.routed_network
    network.checkpoint_cells = options.checkpoint
    if options.compile and options.compile_scope == "network":
        network.compile_routing(options.compile, options.compile_mode)
    elif options.compile:
        compile_modules(static_modules(network) + routed.compiled_heads(),
                        options.compile, options.compile_mode)
    return model
