"""Fast inference of a whole segmentor, cached and rebuilt when the weights change."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from dyn_seg.modeling.backbone import RoutingRecord

from .compile import compile_forward
from .head import FastSemSegHead
from .network import FastDynamicNetwork
from .options import FastOptions

__all__ = ["FastInference", "FastSegmentationModel"]

Features = Dict[str, Optional[torch.Tensor]]


class FastSegmentationModel(nn.Module):
    """Fast copies of a segmentor's backbone and decoder (eval only, same weights).

    ``forward(images)``: normalised, padded images (N, 3, H, W) -> ``(logits, features,
    routing)`` with float32 logits (N, classes, H, W) as ``sem_seg_head`` would return them.
    """

    def __init__(self, model: nn.Module, options: Optional[FastOptions] = None):
        super().__init__()
        options = options or FastOptions()
        self.backbone = FastDynamicNetwork(model.backbone, options)
        dtype = torch.bfloat16 if options.bf16 else torch.float32
        self.head = FastSemSegHead(model.sem_seg_head, options.fold_bn, dtype)
        compile_forward(self.head, options.compile, options.compile_mode)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Features, RoutingRecord]:
        features, routing = self.backbone.forward_with_routing(images)
        return self.head(features), features, routing


class FastInference:
    """The fast inference path of a :class:`DynamicSemanticSegmentor`.

    Called as ``fast(model, images)``, it returns ``(logits, features, routing)`` computed
    by a :class:`FastSegmentationModel` built from ``model``'s current weights. The copy is
    cached and rebuilt whenever a parameter or buffer of ``model`` changes (optimizer
    steps, checkpoint loading, moving to another device), so training and evaluating in
    turns stays correct. It is a plain object, not a submodule: the fast copy never enters
    the model's state dict.
    """

    def __init__(self, options: Optional[FastOptions] = None):
        self.options = options or FastOptions()
        self._fast: Optional[FastSegmentationModel] = None
        self._key: Optional[tuple] = None

    @classmethod
    def from_config(cls, cfg) -> FastInference:
        return cls(FastOptions.from_config(cfg))

    @staticmethod
    def _weights_key(model: nn.Module) -> tuple:
        tensors = list(model.parameters()) + list(model.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def fast_model(self, model: nn.Module) -> FastSegmentationModel:
        """The fast copy of ``model``, rebuilt if its weights changed since the last call."""
        key = self._weights_key(model)
        if self._fast is None or key != self._key:
            self._fast = FastSegmentationModel(model, self.options)
            self._key = key
        return self._fast

    def __call__(self, model: nn.Module, images: torch.Tensor
                 ) -> Tuple[torch.Tensor, Features, RoutingRecord]:
        return self.fast_model(model)(images)
