"""The routed backbone under any detectron2 meta-architecture: routing record, budget loss,
FLOPs and routing statistics in one place.

detectron2's meta-architectures (``PanopticDeepLab``, ``GeneralizedRCNN``, ...) call
``self.backbone(images)`` somewhere inside their ``forward``. :class:`RoutedMetaArchMixin`
keeps their ``forward`` as it is and, for the duration of one call, routes the
:class:`DynamicNetwork`'s ``forward`` through :meth:`DynamicNetwork.forward_with_routing`
(:func:`capture_routing`), so that the :class:`RoutingRecord` of that very call is known
afterwards. The backbone may be the network itself or a wrapper around it such as the FPN of
:mod:`dyn_seg.modeling.fpn` (found by :func:`find_routed_network`).

With the record the mixin adds, like the semantic segmentor:

* training: ``loss_budget`` and the FLOPs / gate statistics of the step in the event
  storage, both by the model's :class:`dyn_seg.modeling.budget.BudgetConstraint` (the
  ``MODEL.BUDGET`` settings) exactly as for the semantic segmentor;
* inference: per image ``"flops": {"real", "expected", "backbone"}`` GFLOPs (backbone:
  the routed network's share of real, cells + stem) and ``"routing"`` (gate
  activations per cell), read by :class:`dyn_seg.evaluation.routing.RoutingEvaluator`.

Real FLOPs = routed cells + stem (analytic, :mod:`dyn_seg.modeling.flops`) + every head the
model runs (:meth:`RoutedMetaArchMixin.head_mflops`, counted by each meta-architecture with
fvcore's ``FlopCountAnalysis``: one multiply-add of a convolution or linear layer is one
FLOP, as in the analytic rules; fvcore also counts norms, pooling and upsampling, and
ignores element-wise activations). Expected FLOPs are those of the cells only (what the
budget constrains).
"""
from __future__ import annotations

import abc
import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from .backbone import DynamicNetwork, RoutingRecord
from .budget import BudgetConstraint
from .flops import MEGA

__all__ = [
    "RoutedMetaArchMixin",
    "budget_from_config",
    "capture_routing",
    "count_module_mflops",
    "find_routed_network",
]


def budget_from_config(cfg) -> BudgetConstraint:
    """The validated ``MODEL.BUDGET`` settings (:meth:`BudgetConstraint.from_config`)."""
    return BudgetConstraint.from_config(cfg)


def find_routed_network(backbone: nn.Module) -> DynamicNetwork:
    """The :class:`DynamicNetwork` of ``backbone``: itself, or its ``bottom_up``."""
    for candidate in (backbone, getattr(backbone, "bottom_up", None)):
        if isinstance(candidate, DynamicNetwork):
            return candidate
    raise TypeError(
        f"The backbone {type(backbone).__name__} contains no DynamicNetwork: set "
        "MODEL.BACKBONE.NAME to build_dynamic_routing_backbone (Panoptic-DeepLab) or "
        "build_dynamic_routing_fpn_backbone (R-CNN)."
    )


@contextlib.contextmanager
def capture_routing(network: DynamicNetwork) -> Iterator[List[Tuple[RoutingRecord, Tuple]]]:
    """While active, calls of ``network`` run :meth:`~DynamicNetwork.forward_with_routing`;
    the yielded list receives ``(record, input shape)`` of every call.

    Features of cells that received nothing (None at inference) are returned as zeros of
    their shape, which is what such a cell contributes: detectron2's heads expect tensors.
    """
    records: List[Tuple[RoutingRecord, Tuple]] = []

    def forward(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features, record = network.forward_with_routing(x)
        records.append((record, tuple(x.shape)))
        shapes = network.output_shape()
        for name, value in features.items():
            if value is None:
                s = shapes[name]
                features[name] = x.new_zeros(
                    x.shape[0], s.channels, x.shape[-2] // s.stride, x.shape[-1] // s.stride
                )
        return features

    # an instance attribute shadows the class's forward for nn.Module.__call__
    network.forward = forward
    try:
        yield records
    finally:
        del network.forward


def count_module_mflops(module: nn.Module, inputs: Tuple) -> float:
    """MFLOPs (multiply-adds) of ``module(*inputs)`` by fvcore's ``FlopCountAnalysis``, in
    eval mode and without gradients (the mode of every submodule is restored)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(module, inputs)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            return float(analysis.total()) / MEGA
    finally:
        for m, training in modes:
            m.training = training


class RoutedMetaArchMixin(metaclass=abc.ABCMeta):
    """Mix into a detectron2 meta-architecture (before it in the bases) whose backbone
    contains a :class:`DynamicNetwork`; call :meth:`setup_routing` (with
    :meth:`BudgetConstraint.from_config` and ``MODEL.CAL_FLOPS``) at the end of ``__init__``.
    Subclasses implement :meth:`head_mflops`.

    ``step_rate`` (training progress in [0, 1], set by the trainer's ``StepRateHook``)
    drives drop path and the budget loss's start and warm-up, as for the semantic segmentor.
    """

    def setup_routing(self, budget: BudgetConstraint, cal_flops: bool = True) -> None:
        self.budget = budget
        self.cal_flops = cal_flops
        if self.budget.constrain and not self.cal_flops:
            raise ValueError(
                "MODEL.BUDGET.CONSTRAIN=True needs MODEL.CAL_FLOPS=True (the budget loss is a "
                "function of the expected FLOPs)."
            )
        self.step_rate = 0.0
        find_routed_network(self.backbone)  # a clear error now rather than in forward

    @property
    def routed_network(self) -> DynamicNetwork:
        return find_routed_network(self.backbone)

    # ---- what each meta-architecture provides ------------------------------------------
    @abc.abstractmethod
    def head_mflops(self, image_size: Tuple[int, int], batched_inputs: List[Dict],
                    outputs: Optional[List[Dict]]) -> torch.Tensor:
        """(N,) MFLOPs of everything the model runs besides the routed network (FPN,
        heads) for images padded to ``image_size``; ``outputs`` are the inference results
        (None in training)."""

    def dense_head_mflops(self, image_size: Tuple[int, int]) -> float:
        """MFLOPs of the heads that run once per image whatever it shows, for an image
        padded to ``image_size`` (what whole-network figures such as
        :func:`dyn_seg.modeling.analysis.all_open_flops` add to the cells). Heads whose cost
        depends on the detections (per-ROI heads) override this to leave them out."""
        size = (int(image_size[0]), int(image_size[1]))
        return float(self.head_mflops(size, [{}], None)[0])

    # ---- the shared mechanism -----------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        network = self.routed_network
        network.step_rate = float(self.step_rate)
        with capture_routing(network) as records:
            out = super().forward(batched_inputs)
        if len(records) != 1:
            raise RuntimeError(
                f"{type(self).__name__} ran its routed backbone {len(records)} times in one "
                "forward; the routing mechanism expects exactly one call."
            )
        routing, shape = records[0]
        if self.training:
            out.update(self.budget_losses(routing))
            self.log_routing(routing, shape, batched_inputs)
            return out
        real, expected = self.image_flops(routing, shape, batched_inputs, out)
        backbone = routing.backbone_flops
        for i, result in enumerate(out):
            if self.cal_flops:
                result["flops"] = {"real": float(real[i]) * 1e-3,
                                   "expected": float(expected[i]) * 1e-3,
                                   "backbone": float(backbone[i]) * 1e-3}
            result["routing"] = {
                key: cell.alpha[i].detach()
                for key, cell in routing.cells.items()
                if cell.alpha is not None
            }
        return out

    def budget_losses(self, routing: RoutingRecord) -> Dict[str, torch.Tensor]:
        """``{"loss_budget": ...}`` while the budget constraint is active, else ``{}``."""
        return self.budget.losses(routing, self.step_rate)

    def image_flops(self, routing: RoutingRecord, shape: Tuple, batched_inputs: List[Dict],
                    outputs: Optional[List[Dict]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-image (real, expected) MFLOPs: real = cells + stem + heads, expected = cells."""
        heads = self.head_mflops((int(shape[-2]), int(shape[-1])), batched_inputs, outputs)
        real = routing.backbone_flops + heads.to(routing.real_flops)
        return real, routing.expected_flops.detach()

    def log_routing(self, routing: RoutingRecord, shape: Tuple,
                    batched_inputs: List[Dict]) -> None:
        """Put FLOPs and gate statistics of this step into the active EventStorage
        (:meth:`BudgetConstraint.log_routing`, as the semantic segmentor does)."""
        real = expected = None
        if self.cal_flops:
            real, expected = self.image_flops(routing, shape, batched_inputs)
        self.budget.log_routing(routing, real, expected)
