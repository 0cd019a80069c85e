"""Importing this package registers the backbone, head and meta-architecture."""
from .cost.budget import BudgetConstraint, budget_loss
from .execution.plans import FaithfulPlan, FastPlan
from .heads.context import DynamicContextSemSegHead  # noqa: F401  (registration)
from .heads.sem_seg import DynamicSemSegHead
from .meta_arch.classification import DynamicClassifier  # noqa: F401  (registration)
from .meta_arch.semantic import DynamicSemanticSegmentor
from .meta_arch.training import prepare_for_training
from .network.backbone import DynamicNetwork, RoutingRecord, build_dynamic_routing_backbone
from .network.transforms import FastInference, InferenceCopy, InferenceOptions
from .routing.cell import GATE_EPS, RoutingCell
from .routing.gate import SoftGate
from .routing.ops import CELL_OPERATIONS, known_operations
from .routing.space import build_routing_space

__all__ = [
    "BudgetConstraint",
    "FaithfulPlan",
    "FastInference",
    "FastPlan",
    "GATE_EPS",
    "InferenceCopy",
    "InferenceOptions",
    "prepare_for_training",
    "CELL_OPERATIONS",
    "DynamicNetwork",
    "DynamicSemSegHead",
    "DynamicSemanticSegmentor",
    "RoutingCell",
    "RoutingRecord",
    "SoftGate",
    "budget_loss",
    "build_dynamic_routing_backbone",
    "build_routing_space",
    "known_operations",
]

from .meta_arch.panoptic import DynamicPanopticDeepLab  # noqa: E402  (registers the meta-architecture)

__all__ += ["DynamicPanopticDeepLab"]
from .meta_arch.rcnn import DynamicRCNN, build_dynamic_routing_fpn_backbone  # noqa: E402

__all__ += ["DynamicRCNN", "build_dynamic_routing_fpn_backbone"]
