"""Datasets: a synthetic Cityscapes-layout generator, PASCAL VOC 2012 registration and a
dataset checker.

Importing this package registers ``voc_2012_sem_seg_{train,val,train_aug}`` (lazily, from
``$DETECTRON2_DATASETS/VOC2012``). The Cityscapes datasets come with detectron2 itself
(``cityscapes_fine_sem_seg_{train,val}``).
"""
from .check import check_sem_seg_dataset, is_error
from .imagenet import generate_synthetic_imagenet, register_all_imagenet
from .synthetic import generate_synthetic_cityscapes
from .voc import convert_voc_labels, register_all_voc, register_pascal_voc_sem_seg

register_all_voc()
register_all_imagenet()

__all__ = [
    "check_sem_seg_dataset",
    "convert_voc_labels",
    "generate_synthetic_cityscapes",
    "is_error",
    "register_all_voc",
    "register_pascal_voc_sem_seg",
]
