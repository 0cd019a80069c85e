"""ImageNet-layout classification data: registration, mapper, loaders and a generator.

Layout (that of ImageNet's ILSVRC-2012 after the usual ``val`` reorganisation into class
folders)::

    $DETECTRON2_DATASETS/imagenet/train/CLASS/*.JPEG
    $DETECTRON2_DATASETS/imagenet/val/CLASS/*.JPEG

Class indices follow the sorted class folder names of ``train``. Importing
:mod:`dyn_seg.data` registers ``imagenet_train`` and ``imagenet_val`` (read lazily) with
``evaluator_type`` ``"classification"``.

:func:`generate_synthetic_imagenet` writes a small data set of ten texture and shape
classes in this layout, for tests and CPU demonstrations.
"""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.utils import comm
from torchvision import transforms as T

from .reader import read_image_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CLASSES",
    "ClassificationDatasetMapper",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "generate_synthetic_imagenet",
    "load_imagenet_split",
    "register_all_imagenet",
    "register_imagenet",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _class_names(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"ImageNet-layout folder {folder} does not exist: expected "
            "ROOT/imagenet/{train,val}/CLASS/*.JPEG under $DETECTRON2_DATASETS (see "
            "datasets/README.md)."
        )
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not names:
        raise FileNotFoundError(
            f"{folder} holds no class folders (expected {folder}/CLASS/*.JPEG)."
        )
    return names


def load_imagenet_split(split_dir: str, classes: Optional[List[str]] = None) -> List[Dict]:
    """Dataset dicts ``{"file_name", "label", "image_id"}`` of one ``split_dir/CLASS/*``
    folder; ``classes`` (default: the sorted folders of ``split_dir``) fixes the indices."""
    if classes is None:
        classes = _class_names(split_dir)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(_class_names(split_dir)) - set(index))
    if unknown:
        raise ValueError(
            f"{split_dir} has class folders {unknown[:5]} that the training split lacks; the "
            "val folders must be a subset of the train folders."
        )
    dicts = []
    for name in _class_names(split_dir):
        folder = os.path.join(split_dir, name)
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                dicts.append({"file_name": os.path.join(folder, f), "label": index[name],
                              "image_id": f"{name}/{f}"})
    if not dicts:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}/CLASS/."
        )
    return dicts


def register_imagenet(name: str, root: str, split: str) -> None:
    """Register ``root/{split}`` (class folders) as ``name``; classes from ``root/train``."""
    split_dir = os.path.join(root, split)
    train_dir = os.path.join(root, "train")

    def load() -> List[Dict]:
        classes = _class_names(train_dir)
        MetadataCatalog.get(name).set(classes=classes)
        return load_imagenet_split(split_dir, classes)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="classification", image_root=split_dir)


def register_all_imagenet(root: Optional[str] = None) -> List[str]:
    """Register ``imagenet_{train,val}`` from ``root/imagenet`` (``root`` defaults to
    ``$DETECTRON2_DATASETS``, else ``datasets``). Returns the names registered by this call."""
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
    names = []
    for split in ("train", "val"):
        name = f"imagenet_{split}"
        if name not in DatasetCatalog.list():
            register_imagenet(name, os.path.join(root, "imagenet"), split)
            names.append(name)
    return names


class ClassificationDatasetMapper:
    """Dataset dict -> ``{"image": (3, S, S) float BGR tensor, "label", "file_name", ...}``.

    Images are read by :func:`dyn_seg.data.reader.read_image_file`, as for segmentation.

    Training: random resized crop (scale ``min_scale``..1 of the area, aspect 3/4..4/3) to
    ``crop_size`` and a horizontal flip (p 0.5), torchvision's standard ImageNet
    augmentation. Testing: short edge resized to ``test_resize``, centre crop ``crop_size``.
    """

    def __init__(self, is_train: bool, *, crop_size: int = 224, min_scale: float = 0.08,
                 test_resize: int = 256, image_format: str = "BGR"):
        if not 0 < min_scale <= 1:
            raise ValueError(f"INPUT.CLASSIFICATION.MIN_SCALE={min_scale} must be in (0, 1].")
        if crop_size < 1 or test_resize < crop_size:
            raise ValueError(
                f"INPUT.CLASSIFICATION.CROP_SIZE={crop_size} / TEST_RESIZE={test_resize}: the "
                "crop must be positive and no larger than the test resize (e.g. 224 / 256)."
            )
        self.is_train = is_train
        self.image_format = image_format
        if is_train:
            self.transform = T.Compose([
                T.RandomResizedCrop(crop_size, scale=(min_scale, 1.0), antialias=True),
                T.RandomHorizontalFlip(),
            ])
        else:
            self.transform = T.Compose([T.Resize(test_resize, antialias=True),
                                        T.CenterCrop(crop_size)])

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool) -> ClassificationDatasetMapper:
        c = cfg.INPUT.CLASSIFICATION
        return cls(is_train, crop_size=c.CROP_SIZE, min_scale=c.MIN_SCALE,
                   test_resize=c.TEST_RESIZE, image_format=cfg.INPUT.FORMAT)

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        # the reader of every dyn_seg loader: a corrupt or non-image file and a 16-bit
        # single-channel image are a DatasetFileError naming the file and the fix
        image = read_image_file(d["file_name"], self.image_format)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        tensor = self.transform(tensor)
        d["image"] = tensor.float()
        d["height"], d["width"] = tensor.shape[-2:]
        return d


def build_classification_train_loader(cfg: CfgNode):
    """detectron2's training loader over ``DATASETS.TRAIN`` with the training mapper (no
    aspect-ratio grouping: every crop is square)."""
    return build_detection_train_loader(
        cfg, mapper=ClassificationDatasetMapper.from_config(cfg, True), aspect_ratio_grouping=False
    )


def build_classification_test_loader(cfg: CfgNode, dataset_name: str):
    """detectron2's inference loader with the test mapper, in batches of the training batch
    per process (every centre crop has the same size)."""
    return build_detection_test_loader(
        cfg, dataset_name, mapper=ClassificationDatasetMapper.from_config(cfg, False),
        batch_size=max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()),
    )


# ---------------------------------------------------------------- generated data

SYNTHETIC_CLASSES = (
    "checkerboard", "circle", "cross", "diagonal_stripes", "dots",
    "horizontal_stripes", "ring", "square", "triangle", "vertical_stripes",
)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _draw(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``name``: random colours, phase, period,
    position and scale, plus noise."""
    fg, bg = _random_colour(rng), _random_colour(rng)
    while np.abs(fg - bg).sum() < 150:  # keep the pattern visible
        fg = _random_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(size / 8, size / 4)
    phase = rng.uniform(0, period)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.2, 0.35) * size
    if name == "horizontal_stripes":
        mask = ((yy + phase) % period) < period / 2
    elif name == "vertical_stripes":
        mask = ((xx + phase) % period) < period / 2
    elif name == "diagonal_stripes":
        mask = ((xx + yy + phase) % period) < period / 2
    elif name == "checkerboard":
        mask = (((xx + phase) // (period / 2)) + ((yy + phase) // (period / 2))) % 2 == 0
    elif name == "dots":
        p = period
        mask = (((xx + phase) % p - p / 2) ** 2 + ((yy + phase) % p - p / 2) ** 2) < (p / 4) ** 2
    elif name == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    elif name == "ring":
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        mask = (d < r) & (d > 0.6 * r)
    elif name == "square":
        mask = (np.abs(xx - cx) < r * 0.85) & (np.abs(yy - cy) < r * 0.85)
    elif name == "cross":
        w = r * 0.3
        mask = ((np.abs(xx - cx) < w) & (np.abs(yy - cy) < r)) | (
            (np.abs(yy - cy) < w) & (np.abs(xx - cx) < r))
    elif name == "triangle":
        top = cy - r
        mask = (yy > top) & (yy < cy + r) & (np.abs(xx - cx) < (yy - top) * 0.6)
    else:
        raise ValueError(f"unknown synthetic class {name!r}; known: {SYNTHETIC_CLASSES}")
    image = np.where(mask[..., None], fg, bg)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_synthetic_imagenet(root: str, num_train: int = 60, num_val: int = 20,
                                size: int = 64, seed: int = 0) -> str:
    """Write ten texture / shape classes (:data:`SYNTHETIC_CLASSES`) in the ImageNet layout
    under ``root/imagenet/{train,val}/CLASS/*.JPEG``; ``num_train`` / ``num_val`` images per
    class of ``size`` x ``size`` pixels. Deterministic for a ``seed``. Returns ``root``
    (use it as ``$DETECTRON2_DATASETS``)."""
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError(
            f"num_train={num_train}, num_val={num_val}, size={size}: need at least one image "
            "per class and split, and images of at least 16 pixels."
        )
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for name in SYNTHETIC_CLASSES:
            folder = os.path.join(root, "imagenet", split, name)
            os.makedirs(folder, exist_ok=True)
            for k in range(count):
                path = os.path.join(folder, f"{name}_{k:05d}.JPEG")
                if not cv2.imwrite(path, _draw(name, size, rng), [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise OSError(f"could not write {path}")
    return root
