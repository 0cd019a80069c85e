"""Importing this package registers the backbone, head and meta-architecture."""
from .backbone import DynamicNetwork, RoutingRecord, build_dynamic_routing_backbone
from .budget import BudgetConstraint, budget_loss
from .cell import GATE_EPS, RoutingCell
from .classification import DynamicClassifier  # noqa: F401  (registration)
from .context_heads import DynamicContextSemSegHead  # noqa: F401  (registration)
from .gate import SoftGate
from .meta_arch import DynamicSemanticSegmentor
from .ops import CELL_OPERATIONS, known_operations
from .plans import FaithfulPlan, FastPlan
from .routing_space import build_routing_space
from .sem_seg_head import DynamicSemSegHead
from .transforms import FastInference, InferenceCopy, InferenceOptions, prepare_for_training

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

from .panoptic import DynamicPanopticDeepLab  # noqa: E402  (registers the meta-architecture)

__all__ += ["DynamicPanopticDeepLab"]
from .rcnn import DynamicRCNN, build_dynamic_routing_fpn_backbone  # noqa: E402

__all__ += ["DynamicRCNN", "build_dynamic_routing_fpn_backbone"]
