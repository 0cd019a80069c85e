"""PASCAL VOC 2012 semantic segmentation datasets for detectron2.

Expected layout (``ROOT`` is ``$DETECTRON2_DATASETS``, as for detectron2's builtin datasets)::

    ROOT/VOC2012/JPEGImages/*.jpg
    ROOT/VOC2012/SegmentationClass/*.png            (official labels, palette PNGs)
    ROOT/VOC2012/SegmentationClassAug/*.png         (optional: SBD-augmented labels)
    ROOT/VOC2012/ImageSets/Segmentation/{train,val}.txt
    ROOT/VOC2012/ImageSets/Segmentation/train_aug.txt   (optional, with SBD)
    ROOT/VOC2012/SegmentationClassTrainIds/*.png    (made by datasets/prepare_voc.py)

VOC's label PNGs are palette ("P") images whose palette *indices* are the class ids
(0..20, 255 on object borders). detectron2's ``DatasetMapper`` reads ``sem_seg_file_name``
with ``read_image(path, "L")``, i.e. ``PIL.Image.convert("L")``, which turns a palette image
into the *luminance of its colours* and so destroys the class ids. The registered datasets
therefore point at ``SegmentationClassTrainIds``: single-channel grayscale PNGs holding the
indices, written once by :func:`convert_voc_labels` (``python datasets/prepare_voc.py``).

Registration is lazy: no file is touched until a dataset is requested from the
``DatasetCatalog``, so importing this module never fails when the data is absent.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "VOC_CLASSES",
    "VOC_COLORS",
    "VOC_SPLITS",
    "convert_voc_labels",
    "load_voc_sem_seg",
    "register_all_voc",
    "register_pascal_voc_sem_seg",
    "voc_palette",
]

logger = logging.getLogger(__name__)

#: The 21 PASCAL VOC classes, background first; the index is the label value.
VOC_CLASSES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
#: Split name -> (image-list file under ``ImageSets/Segmentation``, needs SBD).
VOC_SPLITS: Dict[str, Tuple[str, bool]] = {
    "train": ("train.txt", False),
    "val": ("val.txt", False),
    "train_aug": ("train_aug.txt", True),
}
#: Folder (under ``VOC2012``) of the grayscale index labels that the datasets read.
TRAIN_ID_DIR = "SegmentationClassTrainIds"


def voc_palette(num: int = 256) -> List[Tuple[int, int, int]]:
    """The PASCAL VOC colour map: the bits of a label are spread over the colour channels."""
    palette = []
    for label in range(num):
        r = g = b = 0
        value = label
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette


#: The colours of the 21 classes in VOC's own label images.
VOC_COLORS: List[Tuple[int, int, int]] = voc_palette(len(VOC_CLASSES))


def _read_ids(list_file: Path) -> List[str]:
    with open(list_file) as f:
        return [line.strip().split()[0] for line in f if line.strip()]


def load_voc_sem_seg(voc_root: str, split: str) -> List[dict]:
    """Load one VOC 2012 segmentation split as detectron2 dataset dicts.

    Args:
        voc_root: the ``VOC2012`` folder.
        split: ``"train"``, ``"val"`` or ``"train_aug"``.

    Returns:
        One dict per image with ``file_name``, ``sem_seg_file_name``, ``height``, ``width``.
    """
    root = Path(voc_root)
    list_name, needs_sbd = VOC_SPLITS[split]
    list_file = root / "ImageSets" / "Segmentation" / list_name
    if not list_file.is_file():
        hint = (
            " The train_aug split needs the SBD-augmented labels (SegmentationClassAug) and "
            "its image list; see datasets/README.md."
            if needs_sbd
            else " See datasets/README.md for the expected PASCAL VOC 2012 layout."
        )
        raise FileNotFoundError(f"VOC image list {list_file} not found.{hint}")
    label_dir = root / TRAIN_ID_DIR
    if not label_dir.is_dir():
        raise FileNotFoundError(
            f"{label_dir} not found: run `python datasets/prepare_voc.py` once to write "
            "grayscale class-index labels (detectron2 reads labels as grayscale, which breaks "
            "VOC's palette PNGs)."
        )
    dicts = []
    missing = []
    for image_id in _read_ids(list_file):
        image_file = root / "JPEGImages" / f"{image_id}.jpg"
        label_file = label_dir / f"{image_id}.png"
        if not label_file.is_file():
            missing.append(str(label_file))
            continue
        with Image.open(image_file) as img:  # reads the header only
            width, height = img.size
        dicts.append(
            {
                "file_name": str(image_file),
                "sem_seg_file_name": str(label_file),
                "height": height,
                "width": width,
            }
        )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} label(s) of VOC split {split!r} are missing, e.g. {missing[0]}: "
            "run `python datasets/prepare_voc.py` (with SegmentationClassAug present for "
            "train_aug)."
        )
    logger.info("Loaded %d images of VOC 2012 %s from %s", len(dicts), split, root)
    return dicts


def register_pascal_voc_sem_seg(
    root: str, *, name_prefix: str = "voc_2012_sem_seg", overwrite: bool = False
) -> List[str]:
    """Register the VOC 2012 segmentation splits under ``root/VOC2012`` with detectron2.

    Registers ``{name_prefix}_train``, ``{name_prefix}_val`` and ``{name_prefix}_train_aug``
    (the last only loads when the SBD-augmented set is present). Nothing is read until a
    dataset is requested, so this never fails when the data is absent.

    Args:
        root: the dataset root (``$DETECTRON2_DATASETS``), holding ``VOC2012``.
        name_prefix: prefix of the dataset names.
        overwrite: replace datasets already registered under these names; otherwise those
            are left as they are.

    Returns:
        The names registered by this call.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    voc_root = os.path.join(os.path.expanduser(root), "VOC2012")
    names = []
    for split in VOC_SPLITS:
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            if not overwrite:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda r=voc_root, s=split: load_voc_sem_seg(r, s))
        MetadataCatalog.get(name).set(
            stuff_classes=list(VOC_CLASSES),
            stuff_colors=[list(c) for c in VOC_COLORS],
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=os.path.join(voc_root, "JPEGImages"),
            sem_seg_root=os.path.join(voc_root, TRAIN_ID_DIR),
        )
        names.append(name)
    return names


def register_all_voc(root: Optional[str] = None) -> List[str]:
    """Register the VOC 2012 segmentation datasets under ``$DETECTRON2_DATASETS``.

    Args:
        root: the dataset root; defaults to ``$DETECTRON2_DATASETS`` (else ``datasets``),
            read when called, like detectron2's builtin datasets.

    Returns:
        The names registered by this call (already registered names are kept).
    """
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return register_pascal_voc_sem_seg(root)


def convert_voc_labels(voc_root: str, progress: bool = True, overwrite: bool = False) -> int:
    """Write VOC labels as grayscale class-index PNGs into ``VOC2012/SegmentationClassTrainIds``.

    Official labels (``SegmentationClass``) are used where present, the SBD-augmented ones
    (``SegmentationClassAug``) for the other images. Palette PNGs contribute their palette
    indices; grayscale PNGs are copied as they are.

    Args:
        voc_root: the ``VOC2012`` folder.
        progress: show a tqdm progress bar.
        overwrite: rewrite labels that already exist.

    Returns:
        The number of label files written.
    """
    from tqdm import tqdm

    root = Path(voc_root)
    sources: Dict[str, Path] = {}
    for folder in ("SegmentationClassAug", "SegmentationClass"):  # the latter wins
        src_dir = root / folder
        if src_dir.is_dir():
            sources.update({p.stem: p for p in src_dir.glob("*.png")})
    if not sources:
        raise FileNotFoundError(
            f"No label PNGs in {root / 'SegmentationClass'} or {root / 'SegmentationClassAug'}"
        )
    out_dir = root / TRAIN_ID_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for stem in tqdm(sorted(sources), desc="VOC labels", unit="img", disable=not progress):
        dst = out_dir / f"{stem}.png"
        if dst.is_file() and not overwrite:
            continue
        with Image.open(sources[stem]) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(
                    f"{sources[stem]}: expected a palette or grayscale label PNG, got mode "
                    f"{img.mode!r}"
                )
            labels = np.asarray(img, dtype=np.uint8)  # palette images give their indices
        tmp = dst.with_name(dst.stem + ".tmp.png")
        Image.fromarray(labels).save(tmp)
        os.replace(tmp, dst)
        written += 1
    return written
