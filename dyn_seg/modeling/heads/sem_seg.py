"""The simple fusing decoder of Dynamic Routing (coarse to fine, then a 3x3 predictor)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..cost.flops import MEGA, conv_flops, decoder_map_size
from ..routing.cell import Presence, any_present
from ..routing.layers import ConvSpec, build_conv, kaiming_init, pointwise

__all__ = ["DynamicSemSegHead"]


def decode(features: Dict[str, Optional[torch.Tensor]], in_features: Sequence[str],
           decoders: Sequence[nn.Module], predictor: nn.Module,
           present: Optional[Dict[str, Presence]] = None) -> torch.Tensor:
    """The decoder's top-down pass: from the coarsest feature, each level's output is
    upsampled x2 and added to the next finer feature (a missing feature passes the running
    prediction on); ``predictor`` maps the stride-4 result to logits.

    A feature is missing when it is None or its flag in ``present`` is False (then it is
    zeros): until some coarser feature exists, a missing one is skipped. With device flags
    the skip is a ``torch.where`` (the running prediction is zero while nothing exists).
    """
    present = present or {}
    pred, pred_present = None, False
    for j in reversed(range(len(in_features))):
        name = in_features[j]
        f = features.get(name)
        flag = False if f is None else present.get(name, True)
        if flag is False and pred is None:
            continue
        f = pred if f is None or flag is False else (f if pred is None else f + pred)
        exists = any_present([pred_present, flag])
        pred = decoders[j](f)
        if exists is not True:  # nothing yet at this level: the prediction stays zero
            pred = torch.where(exists, pred, 0.0)
        pred_present = exists
        if j > 0:
            pred = F.interpolate(pred, scale_factor=2, mode="bilinear", align_corners=False)
    return predictor(pred)


@SEM_SEG_HEADS_REGISTRY.register()
class DynamicSemSegHead(nn.Module):
    """For each feature from coarsest to finest: add the running prediction, 1x1 conv
    (C -> C/2, C -> C at stride 4) with norm and ReLU, bilinear x2; then a 3x3 conv to the
    classes and bilinear x4. A missing (None) feature is skipped.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        ignore_value: int = 255,
        norm: str = "BN",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        names = sorted(input_shape, key=lambda k: input_shape[k].stride)
        self.in_features = names
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.norm = norm
        self.decoder_specs: List[ConvSpec] = []
        for j, name in enumerate(names):
            c = input_shape[name].channels
            self.decoder_specs.append(pointwise(c, c if j == 0 else c // 2))
        self.decoders = nn.ModuleList(build_conv(s, norm) for s in self.decoder_specs)
        c0 = self.decoder_specs[0].out_channels
        self.predictor_spec = ConvSpec(c0, num_classes, 3, bias=True)
        self.predictor = build_conv(self.predictor_spec, norm)
        self.strides = [input_shape[n].stride for n in names]
        kaiming_init(self)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        h = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in h.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(h.IN_FEATURES)} names {missing}, which the "
                f"backbone does not produce; available: {sorted(input_shape)}."
            )
        return {
            "input_shape": {k: input_shape[k] for k in h.IN_FEATURES},
            "num_classes": h.NUM_CLASSES,
            "ignore_value": h.IGNORE_VALUE,
            "norm": h.NORM,
            "loss_weight": h.LOSS_WEIGHT,
        }

    def stride4_logits(self, features: Dict[str, Optional[torch.Tensor]],
                       present: Optional[Dict[str, Presence]] = None) -> torch.Tensor:
        """Logits at stride 4 (before the final x4 upsampling); ``present``: the routing
        record's ``feature_present`` (which features are something)."""
        return decode(features, self.in_features, self.decoders, self.predictor, present)

    @staticmethod
    def upsample(logits: torch.Tensor) -> torch.Tensor:
        """Stride-4 logits to input resolution (bilinear x4)."""
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, features, targets: Optional[torch.Tensor] = None,
                present: Optional[Dict[str, Presence]] = None
                ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        logits = self.upsample(self.stride4_logits(features, present))
        if self.training:
            return None, self.losses(logits, targets)
        return logits, {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        from .losses import ignore_safe_cross_entropy  # 0, not NaN, without a valid pixel

        with torch.autocast(logits.device.type, enabled=False):  # the loss in float32
            loss = ignore_safe_cross_entropy(logits.float(), targets, self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}

    def flops(self, size: Tuple[int, int]) -> float:
        """MFLOPs of the decoder at counting size ``size``: one constant per size.

        Every decoder layer and the predictor count, whether or not its feature exists in a
        given forward pass (reference rule, PAPER.md section 4), on
        :func:`decoder_map_size`'s map.
        """
        total = 0.0
        for spec, stride in zip(self.decoder_specs + [self.predictor_spec],
                                self.strides + [self.strides[0]]):
            h, w = decoder_map_size(size, stride)
            total += conv_flops(spec, h, w, self.norm)[0]
        return total / MEGA
