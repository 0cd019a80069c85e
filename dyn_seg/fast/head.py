"""The decoder on the fast inference path (folded norms, channels_last, optional bf16)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dyn_seg.modeling.sem_seg_head import DynamicSemSegHead, decode

from .folding import fold_conv

__all__ = ["FastSemSegHead"]


class FastSemSegHead(nn.Module):
    """Eval-only copy of :class:`DynamicSemSegHead`: same logits from the same features.

    Returns float32 logits (N, classes, H, W) at input resolution, contiguous.
    """

    def __init__(self, head: DynamicSemSegHead, fold_bn: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = list(head.in_features)
        self.decoders = nn.ModuleList(fold_conv(d, fold_bn) for d in head.decoders)
        self.predictor = fold_conv(head.predictor, fold_bn)
        self.to(dtype)
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "FastSemSegHead is for inference only (norms are folded); train the "
                "DynamicSemSegHead it was built from and rebuild."
            )
        return super().train(False)

    @torch.no_grad()
    def forward(self, features: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        logits = decode(features, self.in_features, self.decoders, self.predictor)
        # NCHW before the x4 upsampling: transposing the 16x larger result costs far more
        logits = logits.float().contiguous()
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
