"""Fast paths of dyn_seg: an inference copy of a trained model that computes only what
the gates open, and switches that speed up training steps.

``FastInference`` is what ``DynamicSemanticSegmentor`` uses in eval mode when
``MODEL.FAST.ENABLED`` is set; the faithful eager path stays the default and is what the
parity tests check against.
"""
from .engine import FastInference, FastSegmentationModel
from .folding import FoldedConv, fold_conv, fold_sequence, foldable_norm
from .head import FastSemSegHead
from .network import FastDynamicNetwork
from .options import COMPILE_MODES, FastOptions
from .patterns import (
    GATE_PATTERN_UNITS,
    GatePattern,
    apply_gate_pattern,
    calibrate_batch_norm,
    random_gate_pattern,
)
from .plan import CellPlan, plan_cell
from .training import TrainingOptions, prepare_for_training, training_autocast

__all__ = [
    "COMPILE_MODES",
    "CellPlan",
    "FastDynamicNetwork",
    "FastInference",
    "FastOptions",
    "FastSegmentationModel",
    "FastSemSegHead",
    "FoldedConv",
    "GATE_PATTERN_UNITS",
    "GatePattern",
    "TrainingOptions",
    "apply_gate_pattern",
    "calibrate_batch_norm",
    "fold_conv",
    "fold_sequence",
    "foldable_norm",
    "plan_cell",
    "prepare_for_training",
    "random_gate_pattern",
    "training_autocast",
]
