"""Panoptic-DeepLab (detectron2's ``projects.panoptic_deeplab``) on the routed backbone."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.projects.panoptic_deeplab import PanopticDeepLab
from detectron2.structures import ImageList

from ..network.transforms import FastInference
from .panoptic_any_size import configure_aspp_pooling, forward_any_size
from .routed import RoutedMetaArchMixin, budget_from_config, count_dense_head_mflops

__all__ = ["DynamicPanopticDeepLab"]


@META_ARCH_REGISTRY.register()
class DynamicPanopticDeepLab(RoutedMetaArchMixin, PanopticDeepLab):
    """detectron2's ``PanopticDeepLab`` (heads, targets, losses, post-processing unchanged)
    with a :class:`~dyn_seg.modeling.DynamicNetwork` backbone
    (``MODEL.BACKBONE.NAME: build_dynamic_routing_backbone``).

    Outputs per image detectron2's ``"panoptic_seg"``, ``"sem_seg"``, ``"instances"`` plus
    ``"flops"`` and ``"routing"``; training adds ``loss_budget`` (see
    :mod:`dyn_seg.modeling.meta_arch.routed`). Real FLOPs count both heads at the counting size.
    In eval mode the routed network runs its inference copy on the fast plan
    (``MODEL.FAST.*``), the heads run as detectron2 has them.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # inference at any input size (MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING)
        configure_aspp_pooling(self, cfg.MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING,
                               cfg.INPUT.CROP.SIZE)
        self.setup_routing(budget_from_config(cfg), cfg.MODEL.CAL_FLOPS,
                           FastInference.from_config(cfg))
        self._head_flops: Dict[Tuple[int, int], float] = {}

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return super().forward(batched_inputs)
        # detectron2's post-processing fails on outputs 1 px high or wide or of few pixels
        return forward_any_size(self, super().forward, batched_inputs)

    def dense_head_mflops(self, size: Tuple[int, int]) -> float:
        # the dense heads cost the same for every image of a size: count once per size
        size = (int(size[0]), int(size[1]))
        if size not in self._head_flops:
            self._head_flops[size] = count_dense_head_mflops(self, size)
        return self._head_flops[size]

    def network_input(self, batched_inputs) -> torch.Tensor:
        """As ``PanopticDeepLab.forward`` (detectron2 0.7.2) normalises and pads the images."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        divisibility = self.size_divisibility if self.size_divisibility > 0 \
            else self.backbone.size_divisibility
        return ImageList.from_tensors(images, divisibility).tensor

    def trace_heads(self, features: Dict[str, torch.Tensor]):
        """Both heads as at inference (including the upsampling to stride 1)."""
        sem, _ = self.sem_seg_head(features)
        center, offset, _, _ = self.ins_embed_head(features)
        return sem, center, offset
