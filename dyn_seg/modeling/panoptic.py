"""Panoptic-DeepLab (detectron2's ``projects.panoptic_deeplab``) on the routed backbone."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.projects.panoptic_deeplab import PanopticDeepLab
from torch import nn

from .panoptic_any_size import configure_aspp_pooling, forward_any_size
from .routed import RoutedMetaArchMixin, budget_from_config, count_module_mflops

__all__ = ["DynamicPanopticDeepLab"]


class _DenseHeads(nn.Module):
    """Both Panoptic-DeepLab heads as one module of positional feature tensors (what
    fvcore's tracer takes), run as at inference (including the upsampling to stride 1)."""

    def __init__(self, model: PanopticDeepLab, names: List[str]):
        super().__init__()
        self.sem_seg_head = model.sem_seg_head
        self.ins_embed_head = model.ins_embed_head
        self.names = names

    def forward(self, *tensors):
        features = dict(zip(self.names, tensors))
        sem, _ = self.sem_seg_head(features)
        center, offset, _, _ = self.ins_embed_head(features)
        return sem, center, offset


@META_ARCH_REGISTRY.register()
class DynamicPanopticDeepLab(RoutedMetaArchMixin, PanopticDeepLab):
    """detectron2's ``PanopticDeepLab`` (heads, targets, losses, post-processing unchanged)
    with a :class:`~dyn_seg.modeling.DynamicNetwork` backbone
    (``MODEL.BACKBONE.NAME: build_dynamic_routing_backbone``).

    Outputs per image detectron2's ``"panoptic_seg"``, ``"sem_seg"``, ``"instances"`` plus
    ``"flops"`` and ``"routing"``; training adds ``loss_budget`` (see
    :mod:`dyn_seg.modeling.routed`). Real FLOPs count both heads at the padded input size.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # inference at any input size (MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING)
        configure_aspp_pooling(self, cfg.MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING,
                               cfg.INPUT.CROP.SIZE)
        self.setup_routing(budget_from_config(cfg), cfg.MODEL.CAL_FLOPS)
        self._head_flops: Dict[Tuple[int, int], float] = {}

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return super().forward(batched_inputs)
        # detectron2's post-processing fails on outputs 1 px high or wide or of few pixels
        return forward_any_size(self, super().forward, batched_inputs)

    def head_mflops(self, image_size: Tuple[int, int], batched_inputs: List[Dict],
                    outputs: Optional[List[Dict]]) -> torch.Tensor:
        # the dense heads cost the same for every image of a size: count once per size
        if image_size not in self._head_flops:
            shapes = self.backbone.output_shape()
            names = sorted(shapes)
            h, w = image_size
            feats = tuple(
                torch.zeros(1, shapes[n].channels, h // shapes[n].stride, w // shapes[n].stride,
                            device=self.device)
                for n in names
            )
            self._head_flops[image_size] = count_module_mflops(_DenseHeads(self, names), feats)
        return torch.full((len(batched_inputs),), self._head_flops[image_size])
