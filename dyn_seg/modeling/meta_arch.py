"""DynamicSemanticSegmentor: normalise, pad, route, decode, and add the budget loss."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from ..config_checks import check_model_config
from .backbone import DynamicNetwork, RoutingRecord
from .budget import budget_loss
from .flops import GATE_EPS

__all__ = ["DynamicSemanticSegmentor", "BudgetConfig"]


class BudgetConfig:
    """Budget-constraint settings (``MODEL.BUDGET.*``), validated."""

    def __init__(self, constrain: bool = False, loss_weight: float = 0.5, loss_mu: float = 0.1,
                 flops_all: float = 26300.0, unupdate_rate: float = 0.4, warm_up: bool = True):
        checks = [
            ("LOSS_WEIGHT", loss_weight, loss_weight >= 0, ">= 0"),
            ("LOSS_MU", loss_mu, 0 <= loss_mu <= 1, "in [0, 1] (a share of FLOPS_ALL)"),
            ("FLOPS_ALL", flops_all, flops_all > 0, "> 0 (MFLOPs of all cells, 26300 at 768x768)"),
            ("UNUPDATE_RATE", unupdate_rate, 0 <= unupdate_rate <= 1, "in [0, 1]"),
        ]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ValueError(
                    f"MODEL.BUDGET.{key}={value} is not allowed: it must be {allowed}."
                )
        self.constrain = constrain
        self.loss_weight = loss_weight
        self.mu = loss_mu
        self.flops_all = flops_all
        self.unupdate_rate = unupdate_rate
        self.warm_up = warm_up


def _fast_inference(cfg):
    """The fast inference path when ``MODEL.FAST.ENABLED`` (imported here: it builds on
    this package's modules)."""
    if not cfg.MODEL.FAST.ENABLED:
        return None
    from dyn_seg.fast import FastInference

    return FastInference.from_config(cfg)


@META_ARCH_REGISTRY.register()
class DynamicSemanticSegmentor(nn.Module):
    """Semantic segmentation with a routed backbone.

    Training returns ``{"loss_sem_seg", "loss_budget" (when active)}``; inference returns per
    image ``{"sem_seg": (C, H, W) logits, "flops": {"real", "expected"} GFLOPs,
    "routing": {(layer, scale): (num_paths,) gate activations}}``.

    ``step_rate`` (training progress in [0, 1]) drives drop path and the budget warm-up; a
    trainer hook sets it before every step.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: DynamicNetwork,
        sem_seg_head: nn.Module,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        budget: Optional[BudgetConfig] = None,
        cal_flops: bool = True,
        fast_inference=None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.budget = budget or BudgetConfig()
        self.cal_flops = cal_flops
        if self.budget.constrain and not cal_flops:
            raise ValueError(
                "MODEL.BUDGET.CONSTRAIN=True needs MODEL.CAL_FLOPS=True (the budget loss is a "
                "function of the expected FLOPs)."
            )
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN={list(pixel_mean)} / MODEL.PIXEL_STD={list(pixel_std)} "
                "must have 3 values (BGR images)."
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.step_rate = 0.0
        # dyn_seg.fast.FastInference (a plain object, not a submodule) or None: eval-mode
        # forward then runs the fast copy of this model instead of the faithful modules
        self.fast_inference = fast_inference
        # MODEL.FAST.TRAIN_BF16: training forward passes under bfloat16 autocast (gate
        # activations and losses stay float32); set by dyn_seg.fast.prepare_for_training
        self.train_bf16 = False

    @classmethod
    def from_config(cls, cfg):
        check_model_config(cfg)  # NUM_CLASSES, norm names, SyncBN on CPUs
        backbone = build_backbone(cfg)
        b = cfg.MODEL.BUDGET
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "budget": BudgetConfig(b.CONSTRAIN, b.LOSS_WEIGHT, b.LOSS_MU, b.FLOPS_ALL,
                                   b.UNUPDATE_RATE, b.WARM_UP),
            "cal_flops": cfg.MODEL.CAL_FLOPS,
            "fast_inference": _fast_inference(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = []
        for x in batched_inputs:
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"Expected a (3, H, W) BGR image tensor, got shape {tuple(img.shape)} for "
                    f"{x.get('file_name', 'an input')}; convert it to 3 channels "
                    "(INPUT.FORMAT BGR)."
                )
            images.append((img.to(self.device) - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        self.backbone.step_rate = float(self.step_rate)
        logits = None
        if not self.training and self.fast_inference is not None:
            logits, features, routing = self.fast_inference(self, images.tensor)
        else:
            with self._training_autocast():
                features, routing = self.backbone.forward_with_routing(images.tensor)

        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("Training inputs need a 'sem_seg' target (a (H, W) long tensor).")
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.backbone.size_divisibility,
                self.sem_seg_head.ignore_value,
            ).tensor
            with self._training_autocast():
                _, losses = self.sem_seg_head(features, targets)
            if self.budget.constrain:
                loss = budget_loss(
                    routing.expected_flops,
                    flops_all=self.budget.flops_all,
                    mu=self.budget.mu,
                    loss_weight=self.budget.loss_weight,
                    step_rate=self.step_rate,
                    unupdate_rate=self.budget.unupdate_rate,
                    warm_up=self.budget.warm_up,
                )
                if loss is not None:
                    losses["loss_budget"] = loss
            self._log_routing(features, routing, images.tensor)
            return losses

        if logits is None:
            logits, _ = self.sem_seg_head(features)
        real, expected = self.image_flops(features, routing, images.tensor)
        results = []
        for i, (result, inp, size) in enumerate(
            zip(logits, batched_inputs, images.image_sizes)
        ):
            height = inp.get("height", size[0])
            width = inp.get("width", size[1])
            out = {"sem_seg": sem_seg_postprocess(result, size, height, width)}
            if self.cal_flops:
                out["flops"] = {
                    "real": float(real[i]) * 1e-3,
                    "expected": float(expected[i]) * 1e-3,
                }
            out["routing"] = {
                key: cell.alpha[i].detach()
                for key, cell in routing.cells.items()
                if cell.alpha is not None
            }
            results.append(out)
        return results

    def _training_autocast(self):
        """bfloat16 autocast for training forward passes when ``train_bf16``."""
        if self.training and self.train_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def image_flops(self, features, routing: RoutingRecord, images: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-image (real, expected) MFLOPs: real = cells + stem + head, expected = cells."""
        size = self.backbone.counting_size(images)
        head = self.sem_seg_head.flops(features, size)
        real = routing.real_flops + routing.stem_flops + head
        return real.detach(), routing.expected_flops.detach()

    def _log_routing(self, features, routing: RoutingRecord, images: torch.Tensor) -> None:
        """Put FLOPs and gate statistics of this step into the active EventStorage."""
        try:
            storage = get_event_storage()
        except AssertionError:  # no storage outside a trainer
            return
        stats = {}
        if self.cal_flops:
            real, expected = self.image_flops(features, routing, images)
            stats["flops/real_gflops"] = float(real.mean()) * 1e-3
            stats["flops/expected_gflops"] = float(expected.mean()) * 1e-3
        alphas = [c.alpha for k, c in routing.cells.items() if c.alpha is not None and k[0] >= 0]
        if alphas:
            active = torch.cat([(a > GATE_EPS).float().flatten() for a in alphas])
            stats["routing/gate_active_rate"] = float(active.mean())
            per_layer: Dict[int, List[torch.Tensor]] = {}
            for (l, _), c in routing.cells.items():
                if l >= 0 and c.alpha is not None:
                    per_layer.setdefault(l, []).append((c.alpha > GATE_EPS).float().flatten())
            rates = torch.stack([torch.cat(v).mean() for v in per_layer.values()]).tolist()
            for l, rate in zip(per_layer, rates):  # one host sync for all layers
                stats[f"routing/layer_{l}_active_rate"] = rate
        if stats:
            storage.put_scalars(**stats)
