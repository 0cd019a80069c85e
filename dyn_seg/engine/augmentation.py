"""Training augmentations of the paper's recipe, built from ``INPUT.*``.

In the reference's order: resize the short edge to a random choice (``INPUT.MIN_SIZE_TRAIN``),
flip horizontally, then crop a fixed-size window (``INPUT.CROP``) at a random place; an
image smaller than the window is padded centred (image with 0, label with the ignore value,
so that padded pixels carry no loss).
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

    Along a side where the image is shorter than the crop, the whole side is kept and padded
    **centred**: half of the missing pixels before it, half after (the odd pixel after), with
    ``image_pad_value`` for the image and ``seg_pad_value`` for the segmentation, so every
    training crop has exactly ``crop_size`` (H, W) pixels and the image sits in its middle.
    Other crop types never exceed the image and behave as ``RandomCrop``.
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
        top, left = pad_h // 2, pad_w // 2
        pad = PadTransform(
            left, top, pad_w - left, pad_h - top,
            orig_w=crop.w, orig_h=crop.h,
            pad_value=self.image_pad_value, seg_pad_value=self.seg_pad_value,
        )
        return TransformList([crop, pad])


def build_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Resize (``INPUT.MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``, ``MIN_SIZE_TRAIN_SAMPLING``),
    flip (``INPUT.RANDOM_FLIP``), then the crop padded centred (``INPUT.CROP.*`` when
    enabled), in this order."""
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP={flip!r} is not allowed: use 'horizontal', 'vertical' or 'none'."
        )
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            RandomCropWithPad(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                image_pad_value=0.0,
                seg_pad_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    return augs
