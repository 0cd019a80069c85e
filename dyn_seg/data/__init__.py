"""Datasets: a synthetic Cityscapes-layout generator, PASCAL VOC 2012 registration and a
dataset checker.

Importing this package registers ``voc_2012_sem_seg_{train,val,train_aug}`` (lazily, from
``$DETECTRON2_DATASETS/VOC2012``). The Cityscapes datasets come with detectron2 itself
(``cityscapes_fine_sem_seg_{train,val}``).
"""
from .check import check_dataset, check_sem_seg_dataset, is_error, task_of_records
from .imagenet import generate_synthetic_imagenet, register_all_imagenet
from .roots import DatasetRootError, explain_missing_dataset_roots, root_based_datasets
from .task_loaders import explain_task_dataset_errors
from .voc import convert_voc_labels, register_all_voc, register_pascal_voc_sem_seg

register_all_voc()
register_all_imagenet()
explain_task_dataset_errors()  # damaged panoptic / instance files are named
# a missing dataset folder names DETECTRON2_DATASETS (detectron2's datasets and ours only)
explain_missing_dataset_roots(root_based_datasets())


def __getattr__(name):
    # the street-scene painter loads on first use, not with ``import dyn_seg``
    if name == "generate_synthetic_cityscapes":
        from ..synthetic import generate_synthetic_cityscapes

        return generate_synthetic_cityscapes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DatasetRootError",
    "check_dataset",
    "check_sem_seg_dataset",
    "convert_voc_labels",
    "generate_synthetic_cityscapes",
    "is_error",
    "register_all_voc",
    "register_pascal_voc_sem_seg",
    "task_of_records",
]
