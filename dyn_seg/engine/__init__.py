"""Training and evaluation: the Trainer, its hooks, optimizer, LR schedule, augmentations
and test-time augmentation."""
from .augmentation import RandomCropWithPad, build_train_augmentations
from .bn_stats import PreciseBNWithoutDropPath, drop_path_off, recompute_bn_stats
from .ddp import create_ddp_model
from .guards import NonFiniteGuard, NonFiniteLossError, NonFiniteTrainingError
from .hooks import StepRateHook, unwrap_model
from .predictor import DynSegPredictor
from .solver import (
    CLIP_TYPES,
    ResumableWarmupPolyLR,
    build_lr_scheduler,
    build_optimizer,
    is_gate_parameter,
    scale_gate_lr,
    with_full_model_gradient_clipping,
)
from .trainer import AutocastTrainer, Trainer
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "AutocastTrainer",
    "NonFiniteLossError",
    "ResumableWarmupPolyLR",
    "PreciseBNWithoutDropPath",
    "drop_path_off",
    "recompute_bn_stats",
    "CLIP_TYPES",
    "DynSegPredictor",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "RandomCropWithPad",
    "SemanticSegmentorWithTTA",
    "StepRateHook",
    "Trainer",
    "build_lr_scheduler",
    "build_optimizer",
    "build_train_augmentations",
    "create_ddp_model",
    "is_gate_parameter",
    "scale_gate_lr",
    "unwrap_model",
    "with_full_model_gradient_clipping",
]
