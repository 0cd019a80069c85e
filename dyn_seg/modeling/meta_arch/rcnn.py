"""Mask R-CNN (detectron2's ``GeneralizedRCNN``) on an FPN over the routed backbone."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

from ..network.backbone import DynamicNetwork
from ..network.transforms import FastInference
from .routed import (
    RoutedMetaArchMixin,
    budget_from_config,
    count_dense_head_mflops,
    count_module_mflops,
)

__all__ = ["DynamicRCNN", "build_dynamic_routing_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_dynamic_routing_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_dynamic_routing_fpn_backbone``: detectron2's FPN whose
    bottom-up network is a :class:`DynamicNetwork`; ``MODEL.FPN.IN_FEATURES`` names its
    outputs (``layer_0`` ... ``layer_3``, strides 4 to 32), giving p2 ... p5 and a max-pooled
    p6, as detectron2's ResNet-FPN."""
    bottom_up = DynamicNetwork(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    known = bottom_up.output_shape()
    unknown = [f for f in in_features if f not in known]
    if unknown:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={in_features} names {unknown}, which the Dynamic Routing "
            f"backbone does not output; it outputs {sorted(known)}."
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


class _GivenFeatures(nn.Module):
    """A stand-in bottom-up network that returns the features it was given."""

    def __init__(self, features: Dict[str, torch.Tensor]):
        super().__init__()
        self.features = features

    def forward(self, image):
        return self.features


def _fpn_on(fpn: FPN, bottom_up: nn.Module) -> FPN:
    """A view of ``fpn`` (the same lateral, output and top-block modules) whose bottom-up
    network is ``bottom_up``. ``FPN.forward`` calls ``self.bottom_up(x)`` first and only
    reads ``bottom_up`` through that attribute (detectron2 0.7.2's ``FPN``): a shallow copy
    with its own module table replaces it without touching ``fpn``."""
    view = copy.copy(fpn)
    view._modules = dict(fpn._modules)  # the copy's own table; the same child modules
    view._modules["bottom_up"] = bottom_up
    return view


@META_ARCH_REGISTRY.register()
class DynamicRCNN(RoutedMetaArchMixin, GeneralizedRCNN):
    """detectron2's ``GeneralizedRCNN`` (RPN, ROI heads, losses, post-processing unchanged)
    with ``build_dynamic_routing_fpn_backbone``; outputs per image ``"instances"`` plus
    ``"flops"`` and ``"routing"``, training adds ``loss_budget``
    (see :mod:`dyn_seg.modeling.meta_arch.routed`).

    Real FLOPs of the heads: FPN + RPN head at the counting size, the box head (and
    predictor) once per proposal of the image, the mask head once per detection (at
    inference; in training once per foreground ROI the heads sampled, shared evenly by the
    images of the batch). Anchor generation, NMS and ROI pooling are not counted. In eval
    mode the routed network runs its inference copy on the fast plan (``MODEL.FAST.*``).
    """

    @configurable
    def __init__(self, *, budget, cal_flops: bool = True, fast_inference=None, **kwargs):
        super().__init__(**kwargs)
        self.setup_routing(budget, cal_flops, fast_inference)
        self._dense_flops: Dict[Tuple[int, int], float] = {}
        self._roi_flops: Dict[str, float] = {}
        self._counts: Dict[str, object] = {}
        # how many proposals / ROIs the heads ran on in the last forward
        self.proposal_generator.register_forward_hook(self._record_proposals)
        roi = self.roi_heads
        if getattr(roi, "box_head", None) is not None:
            roi.box_head.register_forward_pre_hook(self._recorder("box"))
        if getattr(roi, "mask_on", False):
            roi.mask_head.register_forward_pre_hook(self._recorder("mask"))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["budget"] = budget_from_config(cfg)
        ret["cal_flops"] = cfg.MODEL.CAL_FLOPS
        ret["fast_inference"] = FastInference.from_config(cfg)
        return ret

    def _record_proposals(self, module, inputs, output) -> None:
        proposals = output[0]
        self._counts["proposals"] = [len(p) for p in proposals]

    def _recorder(self, key: str):
        def hook(module, inputs) -> None:
            x = inputs[0]
            self._counts[key] = int(x.shape[0]) if torch.is_tensor(x) else sum(
                len(i) for i in x)  # the mask head takes (features, instances)
        return hook

    def _roi_head_mflops(self) -> Tuple[float, float]:
        """MFLOPs of the box head + predictor for one ROI, and of the mask head for one."""
        if not self._roi_flops:
            roi = self.roi_heads
            box = nn.Sequential(roi.box_head, _Predictor(roi.box_predictor))
            size = roi.box_pooler.output_size
            channels = self.backbone.output_shape()[roi.box_in_features[0]].channels
            self._roi_flops["box"] = count_module_mflops(
                box, (torch.zeros(1, channels, *_pair(size), device=self.device),))
            self._roi_flops["mask"] = 0.0
            if getattr(roi, "mask_on", False):
                msize = roi.mask_pooler.output_size
                self._roi_flops["mask"] = count_module_mflops(
                    _MaskLayers(roi.mask_head),
                    (torch.zeros(1, channels, *_pair(msize), device=self.device),))
        return self._roi_flops["box"], self._roi_flops["mask"]

    def head_mflops(self, size: Tuple[int, int], batched_inputs: List[Dict],
                    outputs: Optional[List[Dict]]) -> torch.Tensor:
        n = len(batched_inputs)
        box, mask = self._roi_head_mflops()
        dense = torch.full((n,), self.dense_head_mflops(size))
        if outputs is not None:
            proposals = torch.tensor(self._counts.get("proposals", [0] * n), dtype=torch.float)
            detections = torch.tensor([len(o["instances"]) for o in outputs], dtype=torch.float)
            return dense + box * proposals + mask * detections
        rois = float(self._counts.get("box", 0)) / n
        fg = float(self._counts.get("mask", 0)) / n
        return dense + box * rois + mask * fg

    def dense_head_mflops(self, size: Tuple[int, int]) -> float:
        """FPN + RPN head MFLOPs at counting size ``size`` (the per-ROI box and mask heads
        depend on the detections and are counted per image in :meth:`head_mflops`)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._dense_flops:
            self._dense_flops[size] = count_dense_head_mflops(self, size)
        return self._dense_flops[size]

    def trace_heads(self, features: Dict[str, torch.Tensor]):
        """FPN (top-down and lateral layers, on the given bottom-up features) and the RPN's
        convolutional head."""
        given = _GivenFeatures(features)
        pyramid = _fpn_on(self.backbone, given)(next(iter(features.values())))
        rpn = self.proposal_generator
        return rpn.rpn_head([pyramid[f] for f in rpn.in_features])


def _pair(size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class _Predictor(nn.Module):
    """The box predictor's classification and regression layers (its forward returns a
    tuple, which ``nn.Sequential`` cannot chain otherwise)."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, x):
        return self.predictor(x)


class _MaskLayers(nn.Module):
    """The mask head's convolutions and predictor (without the loss / post-processing)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head.layers(x)
