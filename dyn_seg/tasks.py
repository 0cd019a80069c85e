"""Task knowledge in one place: the registry :data:`TASKS`, keyed by meta-architecture.

Each :class:`Task` names what differs between the tasks a routed model can be trained on:
its data (train and test loaders, with their mappers), its evaluators, whether
test-time augmentation applies, and how a prediction is drawn (``overlay``). The trainer's
``build_train_loader`` / ``build_test_loader`` / ``build_evaluator`` / ``test_with_TTA``,
the demo and the visualiser read it through :func:`task_for`.

* semantic (``DynamicSemanticSegmentor``): dyn_seg's ``DynSegDatasetMapper`` with the
  paper's augmentations; mIoU (+ the official Cityscapes evaluation), GFLOPs and gates;
  multi-scale + flip TTA;
* panoptic (``DynamicPanopticDeepLab``): detectron2's ``PanopticDeeplabDatasetMapper``
  (centre / offset targets) for training, detectron2's ``DatasetMapper`` for testing, both
  with checked reading (:mod:`dyn_seg.data.task_mappers`);
  evaluators: PQ / SQ / RQ (``COCOPanopticEvaluator``), mIoU (``SemSegEvaluator`` on the
  dataset's ``sem_seg_file_name``), instance AP (``CityscapesInstanceEvaluator``, on
  Cityscapes panoptic datasets), GFLOPs and gates (``RoutingEvaluator``);
* instance (``DynamicRCNN``): detectron2's ``DatasetMapper`` with instance masks (checked
  reading and annotations);
  evaluators: COCO-style AP / AP50 by ``CityscapesInstanceEvaluator`` (Cityscapes datasets)
  or ``COCOEvaluator`` (others), GFLOPs and gates;
* classification (``DynamicClassifier``): image-level labels (``dyn_seg.data.imagenet``);
  top-1 / top-5, GFLOPs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from dyn_seg.evaluation.build import load_sem_seg_label
from dyn_seg.evaluation.routing import RoutingEvaluator

__all__ = [
    "CityscapesInstanceAPEvaluator",
    "PanopticSemSegEvaluator",
    "TASKS",
    "Task",
    "build_task_evaluator",
    "build_task_test_loader",
    "build_task_train_loader",
    "task_for",
    "task_of",
]


class PanopticSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (mIoU) on a panoptic dataset. Panoptic metadata splits the
    dataset-id table into stuff and things; the semantic predictions hold both, so both
    tables map contiguous ids back to dataset ids (the stuff one alone fails on things)."""

    def __init__(self, dataset_name: str, **kwargs):
        super().__init__(dataset_name, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        table = {**meta.get("stuff_dataset_id_to_contiguous_id", {}),
                 **meta.get("thing_dataset_id_to_contiguous_id", {})}
        self._contiguous_id_to_dataset_id = {v: k for k, v in table.items()} or None


class CityscapesInstanceAPEvaluator(CityscapesInstanceEvaluator):
    """detectron2's ``CityscapesInstanceEvaluator`` (AP, AP50 by cityscapesscripts) that
    works with numpy 2.

    cityscapesscripts dumps its matches with ``json.dumps(default=lambda o: o.__dict__)``,
    which fails on numpy scalars (numpy 2 returns them from its counts), and into a relative
    ``matches.json`` in the working directory. During :meth:`evaluate` its writer is
    replaced by one that converts numpy scalars and writes relative paths into the
    evaluator's temporary folder.
    """

    def evaluate(self):
        import json

        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval
        import numpy as np

        temp_dir = self._temp_dir

        def write_dict_to_json(data, file_name):
            if not os.path.isabs(file_name):
                file_name = os.path.join(temp_dir, file_name)
            with open(file_name, "w") as f:
                json.dump(data, f, sort_keys=True, indent=4,
                          default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)

        original = cs_eval.writeDict2JSON
        cs_eval.writeDict2JSON = write_dict_to_json
        try:
            return super().evaluate()
        finally:
            cs_eval.writeDict2JSON = original


# ---- semantic segmentation ----------------------------------------------------------------
def _semantic_train_loader(cfg: CfgNode):
    from dyn_seg.data.robust_mapper import DynSegDatasetMapper
    from dyn_seg.engine.augmentation import build_train_augmentations

    mapper = DynSegDatasetMapper(cfg, is_train=True,
                                 augmentations=build_train_augmentations(cfg))
    return build_detection_train_loader(cfg, mapper=mapper)


def _semantic_test_loader(cfg: CfgNode, dataset_name: str):
    from dyn_seg.data.robust_mapper import DynSegDatasetMapper

    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=DynSegDatasetMapper(cfg, is_train=False))


def _semantic_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str):
    from dyn_seg.evaluation import build_sem_seg_evaluator

    return build_sem_seg_evaluator(cfg, dataset_name, output_folder)


# ---- classification ------------------------------------------------------------------------
def _classification_train_loader(cfg: CfgNode):
    from dyn_seg.data.imagenet import build_classification_train_loader

    return build_classification_train_loader(cfg)


def _classification_test_loader(cfg: CfgNode, dataset_name: str):
    from dyn_seg.data.imagenet import build_classification_test_loader

    return build_classification_test_loader(cfg, dataset_name)


def _classification_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str):
    from dyn_seg.evaluation.classification import build_classification_evaluator

    return build_classification_evaluator(cfg, dataset_name, output_folder)


# ---- panoptic and instance segmentation (detectron2's mappers, checked reading) -----------
def _panoptic_train_loader(cfg: CfgNode):
    from dyn_seg.data.task_mappers import PanopticDatasetMapper

    return build_detection_train_loader(cfg, mapper=PanopticDatasetMapper(cfg))


def _instance_train_loader(cfg: CfgNode):
    from dyn_seg.data.task_mappers import InstanceDatasetMapper

    return build_detection_train_loader(cfg, mapper=InstanceDatasetMapper(cfg, is_train=True))


def _detection_test_loader(cfg: CfgNode, dataset_name: str):
    """Images and their sizes (a bad file is an error naming it)."""
    from dyn_seg.data.task_mappers import ImageTestMapper

    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=ImageTestMapper(cfg, is_train=False))


def _panoptic_evaluators(cfg: CfgNode, dataset_name: str, output_folder: str) -> list:
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in ("cityscapes_panoptic_seg", "coco_panoptic_seg"):
        raise ValueError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}: a panoptic "
            "model is evaluated on a panoptic dataset, e.g. cityscapes_fine_panoptic_val "
            "(create its files with datasets/prepare_cityscapes.py)."
        )
    os.makedirs(output_folder, exist_ok=True)
    evaluators = [
        COCOPanopticEvaluator(dataset_name, output_folder),
        PanopticSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                                sem_seg_loading_fn=load_sem_seg_label),
    ]
    if evaluator_type == "cityscapes_panoptic_seg":
        evaluators.append(CityscapesInstanceAPEvaluator(dataset_name))
    return evaluators


def _instance_evaluators(cfg: CfgNode, dataset_name: str, output_folder: str) -> list:
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "cityscapes_instance":
        return [CityscapesInstanceAPEvaluator(dataset_name)]
    if evaluator_type == "coco":
        return [COCOEvaluator(dataset_name, output_dir=output_folder)]
    raise ValueError(
        f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}: an instance "
        "model is evaluated on an instance dataset, e.g. cityscapes_fine_instance_seg_val."
    )


def _with_routing(build_evaluators):
    """The task's evaluators followed by GFLOPs and gate statistics (``"routing"``)."""
    def build(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluators:
        evaluators = build_evaluators(cfg, dataset_name, output_folder)
        return DatasetEvaluators(evaluators + [RoutingEvaluator(distributed=True)])
    return build


@dataclass(frozen=True)
class Task:
    """What one task needs besides its model (see the module docstring).

    ``build_evaluator(cfg, dataset_name, output_folder)``; ``tta``: whether
    ``TEST.AUG.ENABLED`` (multi-scale + flip test-time augmentation) applies; ``overlay``:
    the prediction key the demo draws (``"sem_seg"``, ``"panoptic_seg"``, ``"instances"``,
    or None: nothing to draw).
    """

    name: str
    build_train_loader: Callable
    build_test_loader: Callable
    build_evaluator: Callable
    tta: bool
    overlay: Optional[str]


#: Every task, keyed by the meta-architecture (``MODEL.META_ARCHITECTURE``) that trains it.
TASKS: Dict[str, Task] = {
    "DynamicSemanticSegmentor": Task(
        "semantic", _semantic_train_loader, _semantic_test_loader, _semantic_evaluator,
        tta=True, overlay="sem_seg"),
    "DynamicPanopticDeepLab": Task(
        "panoptic", _panoptic_train_loader, _detection_test_loader,
        _with_routing(_panoptic_evaluators), tta=False, overlay="panoptic_seg"),
    "DynamicRCNN": Task(
        "instance", _instance_train_loader, _detection_test_loader,
        _with_routing(_instance_evaluators), tta=False, overlay="instances"),
    "DynamicClassifier": Task(
        "classification", _classification_train_loader, _classification_test_loader,
        _classification_evaluator, tta=False, overlay=None),
}


def task_for(cfg: CfgNode) -> Task:
    """The :class:`Task` of ``cfg``'s ``MODEL.META_ARCHITECTURE`` (a clear error for a
    meta-architecture no task is registered for)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in TASKS:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE={arch!r} has no dyn_seg task (data, evaluators): use "
            f"one of {sorted(TASKS)}, or add a Task for it to dyn_seg.tasks.TASKS."
        )
    return TASKS[arch]


def task_of(cfg: CfgNode) -> str:
    """The name of ``cfg``'s task: ``"semantic"``, ``"panoptic"``, ``"instance"`` or
    ``"classification"``."""
    return task_for(cfg).name


def build_task_train_loader(cfg: CfgNode):
    """The training loader of ``cfg``'s task."""
    return task_for(cfg).build_train_loader(cfg)


def build_task_test_loader(cfg: CfgNode, dataset_name: str):
    """The test loader of ``cfg``'s task on ``dataset_name``."""
    return task_for(cfg).build_test_loader(cfg, dataset_name)


def build_task_evaluator(cfg: CfgNode, dataset_name: str,
                         output_folder: Optional[str] = None) -> DatasetEvaluators:
    """The evaluators of ``cfg``'s task on ``dataset_name``, results under the task's keys
    (``sem_seg``, ``panoptic_seg``, ``segm``, ``classification``) and ``routing``."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    return task_for(cfg).build_evaluator(cfg, dataset_name, output_folder)
