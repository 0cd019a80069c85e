"""A dataset mapper for semantic segmentation that fails early and names the bad file.

detectron2's ``DatasetMapper`` reads images and label maps with PIL conversions that hide
bad data: a 16-bit image or label is clipped to 255 without a word, a label value that is
neither a class nor the ignore value only surfaces as an index error inside the loss (or a
device-side assert on a GPU), and an image/label size mismatch breaks somewhere inside
the augmentations. :class:`DynSegDatasetMapper` reads the files itself and raises
:class:`DatasetFileError`, whose message names the file and the offending value, at the
moment the sample is loaded. ``datasets/check_dataset.py`` finds every such problem of a
dataset at once, before training.

Files are read by :mod:`dyn_seg.data.reader`, the same reader the dataset checker
uses (its rules are tabulated in ``docs/BAD_INPUT.md``).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..config_checks import check_num_classes
from .reader import _CHECK_TOOL, DatasetFileError, read_image_file, read_label_file

__all__ = [
    "DatasetFileError",
    "DynSegDatasetMapper",
    "read_image_file",
    "read_label_file",
]


class DynSegDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` for semantic segmentation with checked reading.

    Same inputs, outputs and augmentations as ``DatasetMapper``: ``{"image": (3, H, W)
    uint8 tensor, "sem_seg": (H, W) long tensor (training), "height", "width", ...}``.
    Images are read with :func:`read_image_file` and label maps with
    :func:`read_label_file`; a label map whose size differs from its image's is an error.
    Label maps are also read and checked at inference, so that an evaluator never meets a
    bad label.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, num_classes: int, ignore_label: int = 255,
                 **kwargs):
        """
        Args:
            is_train, kwargs: as ``DatasetMapper`` (``augmentations``, ``image_format``, ...).
            num_classes: valid label values are ``0 .. num_classes - 1``
                (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``).
            ignore_label: the label value without loss (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
        """
        super().__init__(is_train, **kwargs)
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["num_classes"] = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        ret["ignore_label"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image_file = dataset_dict["file_name"]
        image = read_image_file(image_file, self.image_format)
        utils.check_image_size(dataset_dict, image)  # its error names the image file

        sem_seg_gt = None
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        if label_file is not None:
            sem_seg_gt = read_label_file(label_file, self.num_classes, self.ignore_label)
            if sem_seg_gt.shape != image.shape[:2]:
                (ih, iw), (lh, lw) = image.shape[:2], sem_seg_gt.shape
                raise DatasetFileError(
                    f"size mismatch: image {image_file} is {iw}x{ih} but its label file "
                    f"{label_file} is {lw}x{lh} (width x height); every label map must have "
                    f"its image's size. {_CHECK_TOOL}.",
                    label_file,
                )

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
