"""The evaluators of a semantic-segmentation dataset: mIoU, official Cityscapes, routing."""
from __future__ import annotations

import importlib.util
import logging
from typing import Any, Optional

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesSemSegEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from .routing import RoutingEvaluator

__all__ = ["RenamedEvaluator", "build_sem_seg_evaluator", "load_sem_seg_label"]

logger = logging.getLogger(__name__)

SEM_SEG_EVALUATOR_TYPES = ("sem_seg", "cityscapes_sem_seg")


def load_sem_seg_label(filename: str, dtype: Any = int) -> np.ndarray:
    """Read a label image into a writable ``dtype`` array (H, W).

    detectron2's default loader calls ``np.array(..., copy=False)``, which numpy 2 rejects
    when a copy is needed.
    """
    with PathManager.open(filename, "rb") as f:
        return np.array(np.asarray(Image.open(f)), dtype=dtype)


class RenamedEvaluator(DatasetEvaluator):
    """Wrap an evaluator and rename its result's top-level key (its "task"), so that two
    evaluators that both report ``"sem_seg"`` can run side by side."""

    def __init__(self, evaluator: DatasetEvaluator, old_key: str, new_key: str):
        self._evaluator = evaluator
        self._old_key = old_key
        self._new_key = new_key

    def reset(self) -> None:
        self._evaluator.reset()

    def process(self, inputs, outputs) -> None:
        self._evaluator.process(inputs, outputs)

    def evaluate(self):
        results = self._evaluator.evaluate()
        if results is None:
            return None
        return {self._new_key if k == self._old_key else k: v for k, v in results.items()}


def _official_cityscapes_available() -> bool:
    if importlib.util.find_spec("cityscapesscripts") is None:
        logger.warning("cityscapesscripts is not installed: skipping the official Cityscapes "
                       "evaluation (pip install cityscapesscripts).")
        return False
    if comm.get_local_size() != comm.get_world_size():
        logger.warning("The official Cityscapes evaluation needs a single machine: skipped.")
        return False
    return True


def build_sem_seg_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """mIoU (detectron2's ``SemSegEvaluator``, key ``"sem_seg"``), the official Cityscapes
    evaluation for Cityscapes datasets (key ``"cityscapes_sem_seg"``, when
    ``TEST.CITYSCAPES_OFFICIAL_EVAL``) and FLOPs / gate statistics (key ``"routing"``)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
    if evaluator_type not in SEM_SEG_EVALUATOR_TYPES:
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; dyn_seg evaluates "
            f"semantic segmentation datasets only ({', '.join(SEM_SEG_EVALUATOR_TYPES)}). "
            "Choose a sem_seg dataset in DATASETS.TEST."
        )
    evaluators = [
        SemSegEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            sem_seg_loading_fn=load_sem_seg_label,
        )
    ]
    if (
        evaluator_type == "cityscapes_sem_seg"
        and cfg.TEST.CITYSCAPES_OFFICIAL_EVAL
        and _official_cityscapes_available()
    ):
        evaluators.append(
            RenamedEvaluator(
                CityscapesSemSegEvaluator(dataset_name), "sem_seg", "cityscapes_sem_seg"
            )
        )
    evaluators.append(RoutingEvaluator(distributed=True))
    return DatasetEvaluators(evaluators)
