"""Data and evaluation of the tasks beyond semantic segmentation.

The trainer asks :func:`task_of` which task a config trains (from
``MODEL.META_ARCHITECTURE``) and, for ``"panoptic"`` and ``"instance"``, takes its train
loader, test loader and evaluators from here; semantic segmentation keeps the trainer's own.

* panoptic (``DynamicPanopticDeepLab``): detectron2's ``PanopticDeeplabDatasetMapper``
  (centre / offset targets) for training, detectron2's ``DatasetMapper`` for testing, both
  with checked reading (:mod:`dyn_seg.data.task_mappers`);
  evaluators: PQ / SQ / RQ (``COCOPanopticEvaluator``), mIoU (``SemSegEvaluator`` on the
  dataset's ``sem_seg_file_name``), instance AP (``CityscapesInstanceEvaluator``, on
  Cityscapes panoptic datasets), GFLOPs and gates (``RoutingEvaluator``);
* instance (``DynamicRCNN``): detectron2's ``DatasetMapper`` with instance masks (checked
  reading and annotations);
  evaluators: COCO-style AP / AP50 by ``CityscapesInstanceEvaluator`` (Cityscapes datasets)
  or ``COCOEvaluator`` (others), GFLOPs and gates.
"""
from __future__ import annotations

import os
from typing import Optional

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
    "PANOPTIC_META_ARCHS",
    "INSTANCE_META_ARCHS",
    "build_task_evaluator",
    "build_task_test_loader",
    "build_task_train_loader",
    "task_of",
]

PANOPTIC_META_ARCHS = ("DynamicPanopticDeepLab",)
INSTANCE_META_ARCHS = ("DynamicRCNN",)


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


def task_of(cfg: CfgNode) -> str:
    """``"panoptic"``, ``"instance"`` or ``"semantic"`` (any other meta-architecture)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in PANOPTIC_META_ARCHS:
        return "panoptic"
    if arch in INSTANCE_META_ARCHS:
        return "instance"
    return "semantic"


def build_task_train_loader(cfg: CfgNode):
    """The training loader of a panoptic or instance config."""
    task = task_of(cfg)
    # checked reading: a bad file is an error naming it (dyn_seg.data.task_mappers)
    from dyn_seg.data.task_mappers import InstanceDatasetMapper, PanopticDatasetMapper

    if task == "panoptic":
        return build_detection_train_loader(cfg, mapper=PanopticDatasetMapper(cfg))
    if task == "instance":
        return build_detection_train_loader(cfg, mapper=InstanceDatasetMapper(cfg, is_train=True))
    raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} is a semantic segmentor: use the "
                     "trainer's own loader.")


def build_task_test_loader(cfg: CfgNode, dataset_name: str):
    """The test loader of a panoptic or instance config (images and their sizes)."""
    from dyn_seg.data.task_mappers import ImageTestMapper

    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=ImageTestMapper(cfg, is_train=False))


def build_task_evaluator(cfg: CfgNode, dataset_name: str,
                         output_folder: Optional[str] = None) -> DatasetEvaluators:
    """The evaluators of a panoptic or instance config on ``dataset_name`` (see the module
    docstring); results under the keys ``panoptic_seg``, ``sem_seg``, ``segm`` and
    ``routing``."""
    task = task_of(cfg)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluators = []
    if task == "panoptic":
        if evaluator_type not in ("cityscapes_panoptic_seg", "coco_panoptic_seg"):
            raise ValueError(
                f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}: a panoptic "
                "model is evaluated on a panoptic dataset, e.g. cityscapes_fine_panoptic_val "
                "(create its files with datasets/prepare_cityscapes.py)."
            )
        os.makedirs(output_folder, exist_ok=True)
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        evaluators.append(PanopticSemSegEvaluator(dataset_name, distributed=True,
                                                  output_dir=output_folder,
                                                  sem_seg_loading_fn=load_sem_seg_label))
        if evaluator_type == "cityscapes_panoptic_seg":
            evaluators.append(CityscapesInstanceAPEvaluator(dataset_name))
    elif task == "instance":
        if evaluator_type == "cityscapes_instance":
            evaluators.append(CityscapesInstanceAPEvaluator(dataset_name))
        elif evaluator_type in ("coco",):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        else:
            raise ValueError(
                f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}: an instance "
                "model is evaluated on an instance dataset, e.g. "
                "cityscapes_fine_instance_seg_val."
            )
    else:
        raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} is a semantic segmentor: use "
                         "dyn_seg.evaluation.build_sem_seg_evaluator.")
    evaluators.append(RoutingEvaluator(distributed=True))
    return DatasetEvaluators(evaluators)
