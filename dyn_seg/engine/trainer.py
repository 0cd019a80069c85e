"""The training loop: detectron2's ``DefaultTrainer`` with the paper's recipe."""
from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from typing import Dict, Iterator, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from torch import nn

from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.config import check_amp_precision, validate_config
from dyn_seg.modeling.meta_arch.training import prepare_for_training
from dyn_seg.modeling.network.transforms import TrainingOptions
from dyn_seg.tasks import task_for

from .bn_stats import PreciseBNWithoutDropPath
from .d2_internals import building_with, precise_bn_settings, replace_step
from .ddp import create_ddp_model
from .guards import NonFiniteGuard, NonFiniteLossCheck, explain_non_finite_loss
from .hooks import StepRateHook, unwrap_model
from .solver import build_lr_scheduler, build_optimizer
from .startup_checks import run_startup_checks
from .tta import SemanticSegmentorWithTTA

__all__ = ["AutocastTrainer", "Trainer", "amp_dtype"]

logger = logging.getLogger(__name__)


def amp_dtype(cfg: CfgNode) -> torch.dtype:
    """The torch dtype of ``SOLVER.AMP.PRECISION`` ("bfloat16" or "float16")."""
    validate_config(cfg)
    return getattr(torch, cfg.SOLVER.AMP.PRECISION)


@contextlib.contextmanager
def _forward_under_autocast(model: nn.Module, device_type: str, dtype: torch.dtype
                            ) -> Iterator[None]:
    """Run every forward of ``model`` inside the body under ``torch.autocast`` (the backward
    pass and the optimizer step stay outside it, as PyTorch recommends)."""
    active = []

    def enter(module, args):
        ctx = torch.autocast(device_type, dtype=dtype)
        ctx.__enter__()
        active.append(ctx)

    def leave(module, args, output):
        active.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while active:  # a forward that raised
            active.pop().__exit__(None, None, None)


def _check_tta(cfg: CfgNode) -> None:
    """Test-time augmentation exists for the tasks whose registry entry says so."""
    task = task_for(cfg)
    if not task.tta:
        raise ValueError(
            f"TEST.AUG.ENABLED: test-time augmentation is for semantic segmentation; the "
            f"{task.name} task of MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE} has "
            "none. Set TEST.AUG.ENABLED False."
        )


class _SimpleTrainer(NonFiniteLossCheck, SimpleTrainer):
    """detectron2's ``SimpleTrainer``; a NaN/Inf loss raises ``NonFiniteLossError``."""


class AutocastTrainer(NonFiniteLossCheck, AMPTrainer):
    """detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``, dtype ``SOLVER.AMP.PRECISION``),
    also for models on the CPU; a NaN/Inf loss raises ``NonFiniteLossError``.

    On CUDA it is ``AMPTrainer`` itself (autocast plus detectron2's gradient scaler). On the
    CPU, where ``AMPTrainer.run_step`` refuses to run (it asserts CUDA and uses
    ``torch.cuda.amp.autocast``), ``SimpleTrainer``'s step runs with the model's forward
    under ``torch.autocast("cpu")``; only bfloat16 is allowed there, as it needs no loss
    scaling.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer, *, precision: torch.dtype):
        param = next(unwrap_model(model).parameters())
        self.device_type = param.device.type
        grad_scaler = None
        check_amp_precision(str(precision).split(".")[-1], self.device_type)
        if self.device_type != "cuda":
            grad_scaler = torch.amp.GradScaler(self.device_type, enabled=False)
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler,
                         precision=precision)

    def run_step(self) -> None:
        if self.device_type == "cuda":
            return super().run_step()
        with _forward_under_autocast(self.model, self.device_type, self.precision):
            SimpleTrainer.run_step(self)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for Dynamic Routing networks.

    Differences from detectron2's defaults:

    * optimizer: gate parameters at ``SOLVER.GATE_LR_MULTI`` times the LR, ``"full_model"``
      gradient clipping (:func:`dyn_seg.engine.build_optimizer`);
    * LR schedule ``"WarmupPolyLR"`` of detectron2's DeepLab project
      (:func:`dyn_seg.engine.build_lr_scheduler`);
    * training data: resize, flip, crop padded centred to ``INPUT.CROP.SIZE``; train and
      test data read by :class:`DynSegDatasetMapper` (errors name the bad image or label file);
    * mixed precision (``SOLVER.AMP.ENABLED``, ``SOLVER.AMP.PRECISION``) also on the CPU
      (:class:`AutocastTrainer`);
    * evaluation: mIoU, the official Cityscapes evaluation on Cityscapes, GFLOPs and gate
      statistics; test-time augmentation after training when ``TEST.AUG.ENABLED``;
    * hooks: :class:`StepRateHook` sets the model's ``step_rate`` before every step;
      precise BN gathers its statistics with drop path off
      (:class:`~dyn_seg.engine.bn_stats.PreciseBNWithoutDropPath`);
      :class:`NonFiniteGuard` and ``run_step`` stop training on a NaN/Inf weight or loss,
      naming the iteration and the last good checkpoint;
    * checkpoints: :class:`DynSegCheckpointer` (atomic saves, safe loading, reference
      checkpoints converted on load);
    * ``--num-gpus N`` also trains on CPUs (gloo; DDP without ``device_ids``).
    """

    def __init__(self, cfg: CfgNode, *, allow_unsafe_pickle: bool = False):
        """Build everything from ``cfg`` as ``DefaultTrainer`` does, then use dyn_seg's
        step (:class:`AutocastTrainer` / NaN-checking ``SimpleTrainer``) and checkpointer.

        Args:
            cfg: a config with the dyn_seg keys (``get_dyn_seg_cfg``).
            allow_unsafe_pickle: let ``MODEL.WEIGHTS`` be a pickled ``.pkl`` / ``.pyth``
                file (unpickling runs code from the file: only for trusted files).
        """
        self._allow_unsafe_pickle = allow_unsafe_pickle
        # DefaultTrainer.__init__ wraps the model with the module-level create_ddp_model,
        # which passes device_ids=[local_rank] and so rejects CPU models; detectron2 offers
        # no build_* method for the wrapper, so ours (device_ids=None on the CPU) stands in
        # for it while DefaultTrainer builds.
        with building_with(create_ddp_model):
            super().__init__(cfg)

    def build_hooks(self):
        # The step and the checkpointer that DefaultTrainer.__init__ made are replaced here,
        # before the hooks capture them: build_hooks is its last step.
        self._use_dyn_seg_step_and_checkpointer()
        ret = super().build_hooks()
        ret = [self._without_drop_path(h) if isinstance(h, hooks.PreciseBN) else h for h in ret]
        ret.insert(0, StepRateHook())
        # before the PeriodicCheckpointer: NaN/Inf weights must stop training, not be saved
        ret.insert(1, NonFiniteGuard())
        if self.cfg.TEST.AUG.ENABLED:
            _check_tta(self.cfg)  # the clear error now, not after training
            # Before the writer (the last hook on the main process), so that the results
            # also reach metrics.json.
            at = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
            )
            ret.insert(at, hooks.EvalHook(0, self._test_with_tta_and_keep))
        return ret

    def _use_dyn_seg_step_and_checkpointer(self) -> None:
        """Replace DefaultTrainer's ``SimpleTrainer``/``AMPTrainer`` by ours (same model,
        data loader and optimizer) and its ``DetectionCheckpointer`` by a
        :class:`DynSegCheckpointer` with the same model, folder and checkpointables."""
        def ours(step):
            if self.cfg.SOLVER.AMP.ENABLED:
                return AutocastTrainer(step.model, step.data_loader, step.optimizer,
                                       precision=amp_dtype(self.cfg))
            return _SimpleTrainer(step.model, step.data_loader, step.optimizer)

        replace_step(self, ours)
        old = self.checkpointer
        self.checkpointer = DynSegCheckpointer(
            old.model, old.save_dir, allow_unsafe_pickle=self._allow_unsafe_pickle,
            **old.checkpointables,
        )

    def _without_drop_path(self, hook: hooks.PreciseBN) -> PreciseBNWithoutDropPath:
        """The same precise-BN pass (period, model, loader, batches), with drop path off."""
        return PreciseBNWithoutDropPath(*precise_bn_settings(hook))

    def run_step(self) -> None:
        # a NaN/Inf loss stops training with the iteration and the last good checkpoint named
        with explain_non_finite_loss(self):
            super().run_step()

    def train(self) -> Optional[Dict]:
        """Train, and return the results of the last evaluation (None without one)."""
        run_startup_checks(self.cfg, unwrap_model(self.model))  # crop size, FLOPS_ALL
        super().train()
        return getattr(self, "_last_eval_results", None)

    def _test_with_tta_and_keep(self) -> Dict:
        results = self.test_with_TTA(self.cfg, self.model)
        self._last_eval_results = {**(getattr(self, "_last_eval_results", None) or {}),
                                   **results}
        return results

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """detectron2's ``build_model`` with the training switches ``MODEL.FAST.TRAIN_*``
        (channels_last weights, compiled static modules) applied."""
        model = super().build_model(cfg)
        prepare_for_training(model, TrainingOptions.from_config(cfg))
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The training loader of the config's task (:data:`dyn_seg.tasks.TASKS`)."""
        return task_for(cfg).build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return task_for(cfg).build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return task_for(cfg).build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> Dict:
        """Evaluate ``model`` with multi-scale + flip test-time augmentation (``TEST.AUG``);
        result keys get the suffix ``_TTA``."""
        _check_tta(cfg)
        logger.info("Running inference with test-time augmentation ...")
        tta_model = SemanticSegmentorWithTTA(cfg, unwrap_model(model))
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())
