"""The contract of every routed meta-architecture: :class:`RoutedModel`.

A routed model is a meta-architecture whose backbone contains a :class:`DynamicNetwork`
(the network itself, or the bottom-up network of an FPN). Whatever its task, it provides:

* the routed network (:attr:`RoutedModel.routed_network`) and the FLOPs of everything
  else it runs (:meth:`RoutedModel.dense_head_mflops`, :meth:`RoutedModel.head_mflops`),
  all counted at the ONE counting size of the network
  (:meth:`DynamicNetwork.counting_size`: ``INPUT.FIX_SIZE_FOR_FLOPS`` when set, else the
  padded input), so that real FLOPs = cells + stem + heads at one size;
* per image at inference ``"flops": {"real", "expected", "backbone"}`` GFLOPs and
  ``"routing"`` (gate activations per cell) (:meth:`RoutedModel.add_routing_outputs`),
  read by :class:`dyn_seg.evaluation.routing.RoutingEvaluator`;
* in training ``loss_budget`` and the FLOPs / gate statistics of the step in the event
  storage (:meth:`RoutedModel.budget_losses`, :meth:`RoutedModel.log_routing`, both by the
  model's :class:`~dyn_seg.modeling.cost.budget.BudgetConstraint`);
* the input checks at the model's entry (:meth:`RoutedModel.check_inputs`: 3-channel
  images, no NaN/Inf, the bad image named);
* which execution plan eval-mode ``forward`` runs (:attr:`RoutedModel.execution_plan`,
  from ``MODEL.FAST.*``: the faithful modules, or an inference copy run by the fast plan)
  and which head modules ``MODEL.FAST.TRAIN_COMPILE`` compiles
  (:meth:`RoutedModel.compiled_heads`).

Callers (analysis, startup checks, benchmark, visualiser, evaluators, tools) rely on this
contract only. :class:`RoutedMetaArchMixin` implements ``forward`` for detectron2's own
meta-architectures (``PanopticDeepLab``, ``GeneralizedRCNN``) and the classifier: their
``forward`` stays as it is and calls ``self.backbone(images)``; the network hands the
:class:`RoutingRecord` of that call to the mixin through
:meth:`DynamicNetwork.recording`, and in eval mode runs its inference copy when
``MODEL.FAST.ENABLED`` (``DynamicNetwork.inference``).

Head FLOPs are counted by each meta-architecture, analytically (semantic decoder,
classifier head) or with fvcore's ``FlopCountAnalysis`` (:func:`count_module_mflops`: one
multiply-add of a convolution or linear layer is one FLOP, as in the analytic rules; fvcore
also counts norms, pooling and upsampling, and ignores element-wise activations).
Expected FLOPs are those of the cells only (what the budget constrains).
"""
from __future__ import annotations

import abc
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from ..cost.budget import BudgetConstraint
from ..cost.flops import MEGA
from ..network.backbone import DynamicNetwork, RoutingRecord

__all__ = [
    "RoutedMetaArchMixin",
    "RoutedModel",
    "budget_from_config",
    "check_image",
    "count_dense_head_mflops",
    "count_module_mflops",
    "find_routed_network",
    "routed_model",
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


def routed_model(model: nn.Module) -> RoutedModel:
    """``model`` (or the model inside its DDP wrapper) as a :class:`RoutedModel`; a clear
    error for any other model."""
    inner = model
    while isinstance(inner, nn.Module) and not isinstance(inner, RoutedModel) \
            and isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner.module  # DistributedDataParallel and similar wrappers
    if not isinstance(inner, RoutedModel):
        raise TypeError(
            f"{type(model).__name__} is not a routed model: this needs one of dyn_seg's "
            "meta-architectures (MODEL.META_ARCHITECTURE DynamicSemanticSegmentor, "
            "DynamicPanopticDeepLab, DynamicRCNN or DynamicClassifier)."
        )
    return inner


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


class _Heads(nn.Module):
    """:meth:`RoutedModel.trace_heads` as a module of positional feature tensors."""

    def __init__(self, model: nn.Module, names: List[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors):
        return self.model.trace_heads(dict(zip(self.names, tensors)))


def count_dense_head_mflops(model: RoutedModel, size: Tuple[int, int]) -> float:
    """fvcore's MFLOPs of ``model.trace_heads`` on features of an image of counting size
    ``size`` (zeros of the routed network's output shapes)."""
    network = model.routed_network
    shapes = network.output_shape()
    names = sorted(shapes)
    h, w = size
    device = next(network.parameters()).device
    feats = tuple(
        torch.zeros(1, shapes[n].channels, -(-h // shapes[n].stride), -(-w // shapes[n].stride),
                    device=device)
        for n in names
    )
    return count_module_mflops(_Heads(model, names), feats)


def check_image(image: torch.Tensor, index: int, record: Dict) -> None:
    """Refuse an input image that no routed model can take: not (3, H, W), or holding
    NaN/Inf values. The error names the image (``file_name`` or its batch position)."""
    name = record.get("file_name") or f"image {index} of the batch"
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"Expected a (3, H, W) BGR image tensor, got shape {tuple(image.shape)} for "
            f"{name}; convert it to 3 channels (INPUT.FORMAT BGR)."
        )
    # integer images (what detectron2's mappers give) cannot hold NaN/Inf: no pass over
    # them; float ones: one reduction (a NaN or Inf element makes the sum non-finite), the
    # elementwise count only for the error message
    if not image.is_floating_point() or bool(torch.isfinite(image.sum())):
        return
    bad = int((~torch.isfinite(image)).sum())
    if bad:
        raise ValueError(
            f"The input image {name} holds {bad} NaN/Inf values: the routed network would "
            "spread them to every output. Fix or drop the image (check its decoding and any "
            "normalisation applied before the model)."
        )


class RoutedModel(abc.ABC):
    """The contract every routed meta-architecture implements (see the module docstring).

    Subclasses call :meth:`setup_routing` at the end of ``__init__`` and implement
    :attr:`routed_network` and :meth:`dense_head_mflops`; models whose heads' cost depends
    on the detections also override :meth:`head_mflops`. ``step_rate`` (training progress
    in [0, 1], set by the trainer's ``StepRateHook``) drives drop path and the budget loss.
    """

    budget: BudgetConstraint
    cal_flops: bool
    step_rate: float

    def setup_routing(self, budget: Optional[BudgetConstraint], cal_flops: bool = True) -> None:
        self.budget = budget or BudgetConstraint()
        self.cal_flops = cal_flops
        if self.budget.constrain and not self.cal_flops:
            raise ValueError(
                "MODEL.BUDGET.CONSTRAIN=True needs MODEL.CAL_FLOPS=True (the budget loss is a "
                "function of the expected FLOPs)."
            )
        self.step_rate = 0.0
        self.routed_network  # a clear error now rather than in forward  # noqa: B018

    # ---- what each meta-architecture provides ------------------------------------------
    @property
    @abc.abstractmethod
    def routed_network(self) -> DynamicNetwork:
        """The :class:`DynamicNetwork` this model routes."""

    @abc.abstractmethod
    def dense_head_mflops(self, size: Tuple[int, int]) -> float:
        """MFLOPs of the heads that run once per image whatever it shows (decoder, FPN,
        dense heads) at counting size ``size`` (what whole-network figures such as
        :func:`dyn_seg.modeling.meta_arch.analysis.all_open_flops` add to the cells)."""

    @abc.abstractmethod
    def trace_heads(self, features: Dict[str, torch.Tensor]):
        """The heads that run once per image on the routed network's ``features``, as
        inference runs them, returning tensors (or tuples / lists of them) only: what
        fvcore's tracer counts (:func:`count_dense_head_mflops`, tools/analyze_model.py)."""

    def head_mflops(self, size: Tuple[int, int], batched_inputs: List[Dict],
                    outputs: Optional[List[Dict]]) -> torch.Tensor:
        """(N,) MFLOPs of everything the model ran besides the routed network, at counting
        size ``size``; ``outputs`` are the inference results (None in training). Default:
        the dense heads only."""
        return torch.full((len(batched_inputs),), float(self.dense_head_mflops(size)))

    def network_input(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """The normalised, padded batch (N, 3, H, W) the routed network sees for
        ``batched_inputs`` (the model's own ``preprocess_image``)."""
        return self.preprocess_image(batched_inputs).tensor

    def compiled_heads(self) -> List[nn.Module]:
        """Head modules that ``MODEL.FAST.TRAIN_COMPILE`` compiles besides the network's
        static modules (their forward must be static: no data-dependent control flow).
        Default: none."""
        return []

    # ---- shared by every routed model ---------------------------------------------------
    @property
    def execution_plan(self) -> str:
        """What eval-mode ``forward`` runs: ``"faithful"`` (the model's own modules, every
        path computed and scaled by its gate), or ``"fast: ..."`` (an inference copy of the
        routed network, rebuilt when the weights change, run by the fast plan: paths the
        gates close are not computed). On the fast plan, hooks registered on modules inside
        the routed network do not fire in eval mode (the copy's modules run); hooks on the
        network module itself and on the heads do. ``MODEL.FAST.ENABLED False`` (or
        ``model.fast_inference = None``) gives the faithful plan."""
        fast = self.fast_inference
        return "faithful" if fast is None else "fast: " + fast.describe()

    def check_inputs(self, batched_inputs: List[Dict]) -> None:
        """:func:`check_image` for every input (the model's entry, every task)."""
        for i, x in enumerate(batched_inputs):
            check_image(x["image"], i, x)

    def counting_size(self, shape: Tuple[int, ...]) -> Tuple[int, int]:
        """The (H, W) at which every FLOPs figure of an input of ``shape`` is counted."""
        return self.routed_network.counting_size(shape)

    def image_flops(self, routing: RoutingRecord, shape: Tuple[int, ...],
                    batched_inputs: List[Dict], outputs: Optional[List[Dict]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-image (real, expected) MFLOPs of the padded batch of ``shape``: real = cells
        + stem + heads, all at the counting size; expected = cells."""
        heads = self.head_mflops(self.counting_size(shape), batched_inputs, outputs)
        real = routing.backbone_flops + heads.to(routing.real_flops)
        return real.detach(), routing.expected_flops.detach()

    def add_routing_outputs(self, results: List[Dict], routing: RoutingRecord,
                            shape: Tuple[int, ...], batched_inputs: List[Dict]) -> List[Dict]:
        """Add ``"flops"`` (when ``MODEL.CAL_FLOPS``) and ``"routing"`` to every result."""
        if self.cal_flops:
            real, expected = self.image_flops(routing, shape, batched_inputs, results)
            backbone = routing.backbone_flops
        for i, result in enumerate(results):
            if self.cal_flops:
                result["flops"] = {"real": float(real[i]) * 1e-3,
                                   "expected": float(expected[i]) * 1e-3,
                                   "backbone": float(backbone[i]) * 1e-3}
            result["routing"] = {
                key: cell.alpha[i].detach()
                for key, cell in routing.cells.items()
                if cell.alpha is not None
            }
        return results

    def budget_losses(self, routing: RoutingRecord) -> Dict[str, torch.Tensor]:
        """``{"loss_budget": ...}`` while the budget constraint is active, else ``{}``."""
        return self.budget.losses(routing, self.step_rate)

    def log_routing(self, routing: RoutingRecord, shape: Tuple[int, ...],
                    batched_inputs: List[Dict]) -> None:
        """Put FLOPs and gate statistics of this step into the active EventStorage
        (:meth:`BudgetConstraint.log_routing`)."""
        real = expected = None
        if self.cal_flops:
            real, expected = self.image_flops(routing, shape, batched_inputs)
        self.budget.log_routing(routing, real, expected)


class RoutedMetaArchMixin(RoutedModel):
    """:class:`RoutedModel` for a detectron2 meta-architecture (mix in before it in the
    bases) whose ``forward`` calls ``self.backbone(images)`` once: ``forward`` checks the
    inputs, records the routing of that call (:meth:`DynamicNetwork.recording`) and adds
    the budget loss or the ``flops`` / ``routing`` outputs.

    ``fast_inference`` is the routed network's ``inference`` (``MODEL.FAST.*``; set it to
    None for the faithful plan): with it, eval-mode forward runs the network's inference
    copy on the fast plan, and the heads on its features.
    """

    def setup_routing(self, budget: Optional[BudgetConstraint], cal_flops: bool = True,
                      fast_inference=None) -> None:
        super().setup_routing(budget, cal_flops)
        self.fast_inference = fast_inference

    @property
    def routed_network(self) -> DynamicNetwork:
        return find_routed_network(self.backbone)

    @property
    def fast_inference(self):
        return self.routed_network.inference

    @fast_inference.setter
    def fast_inference(self, value) -> None:
        self.routed_network.inference = value

    def forward(self, batched_inputs: List[Dict]):
        self.check_inputs(batched_inputs)
        network = self.routed_network
        network.step_rate = float(self.step_rate)
        with network.recording() as recorder:
            out = super().forward(batched_inputs)
        routing, shape = recorder.single(type(self).__name__)
        if self.training:
            out.update(self.budget_losses(routing))
            self.log_routing(routing, shape, batched_inputs)
            return out
        return self.add_routing_outputs(out, routing, shape, batched_inputs)
