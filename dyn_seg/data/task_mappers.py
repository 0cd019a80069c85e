"""Dataset mappers of the panoptic and instance tasks that fail early and name the bad file.

The same policy as :class:`~dyn_seg.data.robust_mapper.DynSegDatasetMapper` for semantic
segmentation (``docs/BAD_INPUT.md``): every file is read by :mod:`dyn_seg.data.reader`, and
a file or annotation that cannot be used stops the run with :class:`DatasetFileError`
naming the file, the problem and the fix (``datasets/check_dataset.py`` lists every such
problem of a dataset at once, before training). detectron2's mappers read with
``read_image`` (which clips 16-bit images to white and reports a truncated or missing file
without its name) and meet degenerate polygons and mismatched panoptic PNGs deep inside
the augmentations.

* :class:`PanopticDatasetMapper`: detectron2's ``PanopticDeeplabDatasetMapper`` (training
  targets of Panoptic-DeepLab) with checked reading of the image and the panoptic PNG;
* :class:`InstanceDatasetMapper`: detectron2's ``DatasetMapper`` with instance annotations
  (Mask R-CNN), checked reading and checked annotations;
* :class:`ImageTestMapper`: the test-time mapper of both tasks (the image and its size).
"""
from __future__ import annotations

import copy
from typing import Dict

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.panoptic_deeplab import PanopticDeeplabDatasetMapper

from .annotations import annotation_problems
from .reader import _CHECK_TOOL, DatasetFileError, read_image_file, read_panoptic_file
from .robust_mapper import DynSegDatasetMapper

__all__ = ["ImageTestMapper", "InstanceDatasetMapper", "PanopticDatasetMapper"]


def _check_same_size(image: np.ndarray, image_file: str, label: np.ndarray, label_file: str,
                     kind: str) -> None:
    if label.shape[:2] != image.shape[:2]:
        (ih, iw), (lh, lw) = image.shape[:2], label.shape[:2]
        raise DatasetFileError(
            f"size mismatch: image {image_file} is {iw}x{ih} but its {kind} file {label_file} "
            f"is {lw}x{lh} (width x height); every {kind} file must have its image's size. "
            f"{_CHECK_TOOL}.",
            label_file,
        )


class PanopticDatasetMapper(PanopticDeeplabDatasetMapper):
    """detectron2's ``PanopticDeeplabDatasetMapper`` (same augmentations and targets) whose
    image and panoptic PNG are read by :mod:`dyn_seg.data.reader`: a missing, truncated or
    non-RGB panoptic PNG, or one of another size than its image, is a
    :class:`DatasetFileError` naming the file."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        from panopticapi.utils import rgb2id

        dataset_dict = copy.deepcopy(dataset_dict)
        image_file = dataset_dict["file_name"]
        image = read_image_file(image_file, self.image_format)
        utils.check_image_size(dataset_dict, image)
        pan_file = dataset_dict.pop("pan_seg_file_name")
        pan_seg_gt = read_panoptic_file(pan_file)
        _check_same_size(image, image_file, pan_seg_gt, pan_file, "panoptic label")

        aug_input = T.AugInput(image, sem_seg=pan_seg_gt)  # as detectron2's mapper
        self.augmentations(aug_input)
        image, pan_seg_gt = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.update(
            self.panoptic_target_generator(rgb2id(pan_seg_gt), dataset_dict["segments_info"])
        )
        return dataset_dict


class InstanceDatasetMapper(DynSegDatasetMapper):
    """detectron2's ``DatasetMapper`` for instance annotations with checked reading
    (:class:`DynSegDatasetMapper`) and checked annotations: a degenerate polygon or a
    non-finite box is a :class:`DatasetFileError` naming the image and the annotation."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        problems = annotation_problems(dataset_dict) if self.is_train else []
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetFileError(f"{problems[0]}{more}. {_CHECK_TOOL}.",
                                   dataset_dict.get("file_name"))
        return super().__call__(dataset_dict)


class ImageTestMapper(DatasetMapper):
    """detectron2's test-time ``DatasetMapper`` (image, height, width) whose image is read
    by :mod:`dyn_seg.data.reader`; ground truth files are left to the evaluators."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.pop("annotations", None)
        return dataset_dict
