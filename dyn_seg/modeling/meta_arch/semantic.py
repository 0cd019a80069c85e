"""DynamicSemanticSegmentor: normalise, pad, route, decode, and add the budget loss."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ...config_checks import check_model_config
from ..cost.budget import BudgetConstraint
from ..execution.export_guards import forbid_capture
from ..network.backbone import DynamicNetwork
from ..network.transforms import FastInference
from .routed import RoutedModel

__all__ = ["DynamicSemanticSegmentor"]


@META_ARCH_REGISTRY.register()
class DynamicSemanticSegmentor(RoutedModel, nn.Module):
    """Semantic segmentation with a routed backbone (a :class:`RoutedModel`).

    Training returns ``{"loss_sem_seg", "loss_budget" (when active)}``; inference returns per
    image ``{"sem_seg": (C, H, W) logits, "flops": {"real", "expected", "backbone"} GFLOPs,
    "routing": {(layer, scale): (num_paths,) gate activations}}``.

    ``step_rate`` (training progress in [0, 1]) drives drop path and the budget warm-up; a
    trainer hook sets it before every step. ``fast_inference`` (``MODEL.FAST.*``, or None):
    eval-mode forward then runs an inference copy of the network and the decoder
    (:attr:`execution_plan`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: DynamicNetwork,
        sem_seg_head: nn.Module,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        budget: Optional[BudgetConstraint] = None,
        cal_flops: bool = True,
        fast_inference=None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN={list(pixel_mean)} / MODEL.PIXEL_STD={list(pixel_std)} "
                "must have 3 values (BGR images)."
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.setup_routing(budget, cal_flops)
        # FastInference (a plain object, not a submodule) or None: eval-mode forward then
        # runs the fast plan on a transformed copy of these modules
        self.fast_inference = fast_inference

    @property
    def routed_network(self) -> DynamicNetwork:
        return self.backbone

    def dense_head_mflops(self, size: Tuple[int, int]) -> float:
        # the decoder's analytic count depends on the size only: once per size
        size = (int(size[0]), int(size[1]))
        cache = self.__dict__.setdefault("_head_flops", {})
        if size not in cache:
            cache[size] = self.sem_seg_head.flops(size)
        return cache[size]

    def trace_heads(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.sem_seg_head(features)[0]

    def compiled_heads(self) -> List[nn.Module]:
        return [self.sem_seg_head]

    @classmethod
    def from_config(cls, cfg):
        check_model_config(cfg)  # NUM_CLASSES, norm names, SyncBN on CPUs
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "budget": BudgetConstraint.from_config(cfg),
            "cal_flops": cfg.MODEL.CAL_FLOPS,
            "fast_inference": FastInference.from_config(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        self.check_inputs(batched_inputs)
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        self.backbone.step_rate = float(self.step_rate)
        shape = tuple(images.tensor.shape)
        logits = None
        if not self.training and self.fast_inference is not None:
            logits, features, routing = self.fast_inference(self, images.tensor)
        else:
            features, routing = self.backbone.forward_with_routing(images.tensor)

        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("Training inputs need a 'sem_seg' target (a (H, W) long tensor).")
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.backbone.size_divisibility,
                self.sem_seg_head.ignore_value,
            ).tensor
            _, losses = self.sem_seg_head(features, targets, routing.feature_present)
            losses.update(self.budget_losses(routing))
            self.log_routing(routing, shape, batched_inputs)
            return losses

        if logits is None:
            logits, _ = self.sem_seg_head(features, present=routing.feature_present)
        # per-image results read the record on the host: a trace would freeze them
        forbid_capture("DynamicSemanticSegmentor's per-image results (host floats, "
                       "(layer, scale) keys)")
        results = []
        for result, inp, size in zip(logits, batched_inputs, images.image_sizes):
            height = inp.get("height", size[0])
            width = inp.get("width", size[1])
            results.append({"sem_seg": sem_seg_postprocess(result, size, height, width)})
        return self.add_routing_outputs(results, routing, shape, batched_inputs)
