"""Image classification over the routing space (ImageNet pretraining of the backbone).

:class:`DynamicClassifier` puts a global-pool + linear head on the same backbone as the
segmentor (``build_backbone(cfg)``, kept under the name ``backbone``), so its checkpoint
initialises a segmentation model through ``MODEL.WEIGHTS`` directly: every ``backbone.*``
parameter matches, and what the classifier lacks (gates when it was trained as
Network-Fix, the decoder) starts fresh and is listed by detectron2's checkpointer.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..cost.budget import BudgetConstraint
from ..cost.flops import MEGA, scale_size
from ..network.backbone import DynamicNetwork
from ..network.transforms import FastInference
from .routed import RoutedMetaArchMixin

__all__ = [
    "DynamicClassifier",
    "GlobalPoolClassificationHead",
    "ImageClassifier",
]

class GlobalPoolClassificationHead(nn.Module):
    """Global average pooling of each feature in ``in_features``, concatenated, then a
    linear layer: features -> (N, num_classes) logits. A missing (None) feature pools to
    zeros (nothing reached that scale)."""

    def __init__(self, input_shape: Dict[str, ShapeSpec], in_features: Sequence[str],
                 num_classes: int):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing or not in_features:
            raise ValueError(
                f"MODEL.CLASSIFIER.IN_FEATURES={list(in_features)} must name one or more "
                f"backbone features; available: {sorted(input_shape)}."
            )
        if num_classes < 2:
            raise ValueError(f"MODEL.CLASSIFIER.NUM_CLASSES={num_classes} must be >= 2.")
        self.in_features = list(in_features)
        self.channels = [input_shape[f].channels for f in self.in_features]
        self.strides = [input_shape[f].stride for f in self.in_features]
        self.linear = nn.Linear(sum(self.channels), num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        ref = next(f for f in features.values() if f is not None)
        pooled = []
        for name, c in zip(self.in_features, self.channels):
            x = features.get(name)
            pooled.append(ref.new_zeros(ref.shape[0], c) if x is None else x.mean(dim=(2, 3)))
        return self.linear(torch.cat(pooled, dim=1))

    def flops(self, size: Tuple[int, int]) -> float:
        """MFLOPs at counting size ``size``: pooling (H*W*C per feature) and the linear
        layer (bias not counted)."""
        total = 0.0
        for c, s in zip(self.channels, self.strides):
            h, w = scale_size(size, s)
            total += h * w * c
        total += self.linear.in_features * self.linear.out_features
        return total / MEGA


class ImageClassifier(nn.Module):
    """Normalise, run the backbone, classify. Inputs: dicts with ``"image"`` (3, H, W) BGR
    and, for training, ``"label"`` (int). Training returns ``{"loss_cls"}``; inference
    returns per image ``{"scores": (K,) logits}``."""

    @configurable
    def __init__(self, *, backbone: nn.Module, head: GlobalPoolClassificationHead,
                 pixel_mean: Tuple[float, ...], pixel_std: Tuple[float, ...]):
        super().__init__()
        self.backbone = backbone
        self.cls_head = head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "head": GlobalPoolClassificationHead(
                backbone.output_shape(), cfg.MODEL.CLASSIFIER.IN_FEATURES,
                cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            ),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        logits = self.cls_head(self.backbone(images.tensor))
        if not self.training:
            return [{"scores": logits[i]} for i in range(len(batched_inputs))]
        if any("label" not in x for x in batched_inputs):
            raise ValueError("Training inputs need a 'label' (the class index, an int).")
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs],
                                 device=logits.device)
        num_classes = logits.shape[1]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Labels must be class indices in [0, {num_classes}), got "
                f"{labels.min().item()}..{labels.max().item()}: set "
                "MODEL.CLASSIFIER.NUM_CLASSES to the dataset's number of classes."
            )
        return {"loss_cls": F.cross_entropy(logits.float(), labels)}


@META_ARCH_REGISTRY.register()
class DynamicClassifier(RoutedMetaArchMixin, ImageClassifier):
    """Image classification with a routed backbone (:class:`ImageClassifier` on
    :class:`DynamicNetwork`).

    Inference adds per image ``"flops": {"real", "expected", "backbone"}`` GFLOPs and
    ``"routing"`` (gate activations per cell); training adds ``loss_budget`` when active,
    through the mechanism every routed meta-architecture shares
    (:mod:`dyn_seg.modeling.meta_arch.routed`).
    ``MODEL.GATE.GATE_ON False`` gives the paper's Network-Fix; with gates,
    ``MODEL.BUDGET.*`` adds the same budget loss as segmentation. Real FLOPs = cells + stem
    + the pooling / linear head.
    """

    @configurable
    def __init__(self, *, budget: Optional[BudgetConstraint] = None, cal_flops: bool = True,
                 fast_inference=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.backbone, DynamicNetwork):
            raise ValueError(
                "DynamicClassifier (MODEL.META_ARCHITECTURE) needs the Dynamic Routing backbone "
                "(MODEL.BACKBONE.NAME build_dynamic_routing_backbone), got "
                f"{type(self.backbone).__name__}."
            )
        self.setup_routing(budget, cal_flops, fast_inference)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["budget"] = BudgetConstraint.from_config(cfg)
        ret["cal_flops"] = cfg.MODEL.CAL_FLOPS
        ret["fast_inference"] = FastInference.from_config(cfg)
        return ret

    def dense_head_mflops(self, size: Tuple[int, int]) -> float:
        return self.cls_head.flops(size)

    def trace_heads(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.cls_head(features)

    def compiled_heads(self) -> List[nn.Module]:
        return [self.cls_head]
