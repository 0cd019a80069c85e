"""Training augmentations of the paper's recipe, built from ``INPUT.*``.

Resize the short edge to a random choice (``INPUT.MIN_SIZE_TRAIN``), crop a fixed-size
window (``INPUT.CROP``) padding images that are smaller than it (image with 0, label with
the ignore value, so that padded pixels carry no loss), and flip horizontally.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform, TransformList

__all__ = ["RandomCropWithPad", "build_train_augmentations"]


class RandomCropWithPad(T.RandomCrop):
    """detectron2's ``RandomCrop``, but an ``"absolute"`` crop larger than the image pads it.

    The image is padded at the bottom and right with ``image_pad_value`` and the
    segmentation with ``seg_pad_value``, so every training crop has exactly ``crop_size``
    (H, W) pixels. Other crop types never exceed the image and behave as ``RandomCrop``.
    """

    def __init__(
        self,
        crop_type: str,
        crop_size: Sequence[float],
        *,
        image_pad_value: float = 0.0,
        seg_pad_value: int = 255,
    ):
        super().__init__(crop_type, crop_size)
        self.image_pad_value = image_pad_value
        self.seg_pad_value = seg_pad_value

    def get_transform(self, image: np.ndarray):
        crop = super().get_transform(image)
        if self.crop_type != "absolute":
            return crop
        target_h, target_w = (int(s) for s in self.crop_size)
        pad_h, pad_w = max(target_h - crop.h, 0), max(target_w - crop.w, 0)
        if pad_h == 0 and pad_w == 0:
            return crop
        pad = PadTransform(
            0, 0, pad_w, pad_h,
            orig_w=crop.w, orig_h=crop.h,
            pad_value=self.image_pad_value, seg_pad_value=self.seg_pad_value,
        )
        return TransformList([crop, pad])


def build_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Resize (``INPUT.MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``, ``MIN_SIZE_TRAIN_SAMPLING``),
    padded crop (``INPUT.CROP.*`` when enabled) and flip (``INPUT.RANDOM_FLIP``)."""
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            RandomCropWithPad(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                image_pad_value=0.0,
                seg_pad_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP={flip!r} is not allowed: use 'horizontal', 'vertical' or 'none'."
        )
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    return augs
