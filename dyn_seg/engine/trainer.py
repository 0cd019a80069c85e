"""The training loop: detectron2's ``DefaultTrainer`` with the paper's recipe."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.data.imagenet import (
    build_classification_test_loader,
    build_classification_train_loader,
)
from dyn_seg.data.robust_mapper import DynSegDatasetMapper
from dyn_seg.evaluation import build_sem_seg_evaluator
from dyn_seg.evaluation.classification import build_classification_evaluator
from dyn_seg.fast import TrainingOptions, prepare_for_training
from dyn_seg.modeling.classification import is_classification_config

from .augmentation import build_train_augmentations
from .ddp import create_ddp_model
from .guards import NonFiniteGuard, explain_non_finite_loss
from .hooks import StepRateHook, unwrap_model
from .solver import build_lr_scheduler, build_optimizer
from .tta import SemanticSegmentorWithTTA

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for Dynamic Routing networks.

    Differences from detectron2's defaults:

    * optimizer: gate parameters at ``SOLVER.GATE_LR_MULTI`` times the LR, ``"full_model"``
      gradient clipping (:func:`dyn_seg.engine.build_optimizer`);
    * LR schedule ``"WarmupPolyLR"`` (:func:`dyn_seg.engine.build_lr_scheduler`);
    * training data: resize, crop padded to ``INPUT.CROP.SIZE``, flip; train and test data
      read by :class:`DynSegDatasetMapper` (errors name the bad image or label file);
    * evaluation: mIoU, the official Cityscapes evaluation on Cityscapes, GFLOPs and gate
      statistics; test-time augmentation after training when ``TEST.AUG.ENABLED``;
    * hooks: :class:`StepRateHook` sets the model's ``step_rate`` before every step;
      :class:`NonFiniteGuard` and ``run_step`` stop training on a NaN/Inf weight or loss,
      naming the iteration and the last good checkpoint;
    * checkpoints: :class:`DynSegCheckpointer` (atomic saves, safe loading, reference
      checkpoints converted on load);
    * ``--num-gpus N`` also trains on CPUs (gloo; DDP without ``device_ids``).
    """

    def __init__(self, cfg: CfgNode, *, allow_unsafe_pickle: bool = False):
        """Build everything from ``cfg`` in ``DefaultTrainer``'s order.

        Args:
            cfg: a config with the dyn_seg keys (``add_dynamic_routing_config``).
            allow_unsafe_pickle: let ``MODEL.WEIGHTS`` be a pickled ``.pkl`` / ``.pyth``
                file (unpickling runs code from the file: only for trusted files).
        """
        # DefaultTrainer.__init__ hard-codes its DDP wrapper and checkpointer class; this
        # is its body with those two replaced.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        # MODEL.FAST.TRAIN_*: channels_last, bf16 autocast, compiled static modules
        prepare_for_training(model, TrainingOptions.from_config(cfg))
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DynSegCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_unsafe_pickle=allow_unsafe_pickle,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        ret = super().build_hooks()
        ret.insert(0, StepRateHook())
        # before the PeriodicCheckpointer: NaN/Inf weights must stop training, not be saved
        ret.insert(1, NonFiniteGuard())
        if self.cfg.TEST.AUG.ENABLED:
            # Before the writer (the last hook on the main process), so that the results
            # also reach metrics.json.
            at = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
            )
            ret.insert(at, hooks.EvalHook(0, self._test_with_tta_and_keep))
        return ret

    def run_step(self) -> None:
        # a NaN/Inf loss stops training with the iteration and the last good checkpoint named
        with explain_non_finite_loss(self):
            super().run_step()

    def train(self) -> Optional[Dict]:
        """Train, and return the results of the last evaluation (None without one)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    def _test_with_tta_and_keep(self) -> Dict:
        results = self.test_with_TTA(self.cfg, self.model)
        self._last_eval_results = {**(getattr(self, "_last_eval_results", None) or {}),
                                   **results}
        return results

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if is_classification_config(cfg):  # image-level labels: crops, flips, no masks
            return build_classification_train_loader(cfg)
        mapper = DynSegDatasetMapper(
            cfg, is_train=True, augmentations=build_train_augmentations(cfg)
        )
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        if is_classification_config(cfg):
            return build_classification_test_loader(cfg, dataset_name)
        return build_detection_test_loader(
            cfg, dataset_name, mapper=DynSegDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        if is_classification_config(cfg):  # top-1 / top-5 and FLOPs
            return build_classification_evaluator(cfg, dataset_name, output_folder)
        return build_sem_seg_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> Dict:
        """Evaluate ``model`` with multi-scale + flip test-time augmentation (``TEST.AUG``);
        result keys get the suffix ``_TTA``."""
        logger.info("Running inference with test-time augmentation ...")
        tta_model = SemanticSegmentorWithTTA(cfg, unwrap_model(model))
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())
