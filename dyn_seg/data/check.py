"""Scan a semantic segmentation dataset for every problem before training starts.

:func:`check_sem_seg_dataset` opens every image and label of a list of detectron2 dataset
dicts and reports all problems at once rather than stopping at the first: missing or
unreadable files, label values that are neither a class nor the ignore label, image/label
size mismatches, 16-bit images and labels that detectron2 would misread. Each message starts
with ``"error: "`` or ``"warning: "`` (see :func:`is_error`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["check_sem_seg_dataset", "is_error"]

ERROR = "error: "
WARNING = "warning: "
_MAX_LISTED_VALUES = 20
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GRAY_MODES = ("L", "LA", "1")


def is_error(message: str) -> bool:
    """True for a problem that breaks training or evaluation, False for a warning."""
    return message.startswith(ERROR)


def _open(path: str) -> Tuple[Optional[Image.Image], Optional[str]]:
    """Fully decode an image; return it, or None and the reason it failed."""
    try:
        with Image.open(path) as img:
            img.load()  # decoding everything catches truncated or corrupt files
            return img.copy(), None
    except Exception as e:  # PIL raises many exception types for bad files
        return None, f"{type(e).__name__}: {e}"


def _format_values(values: Sequence[int]) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED_VALUES])
    if len(values) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(values)} values)"
    return shown


def _check_record(
    index: int, record: dict, num_classes: int, ignore_label: int
) -> List[str]:
    """All problems of one dataset dict."""
    problems: List[str] = []
    image_file = record.get("file_name")
    label_file = record.get("sem_seg_file_name")
    where = f"record {index}"
    if not image_file:
        problems.append(f"{ERROR}{where} has no 'file_name'")
    if not label_file:
        problems.append(f"{ERROR}{where} ({image_file}) has no 'sem_seg_file_name'")

    image = label = None
    if image_file:
        if not os.path.isfile(image_file):
            problems.append(f"{ERROR}missing image file: {image_file}")
        else:
            image, reason = _open(image_file)
            if image is None:
                problems.append(f"{ERROR}unreadable or corrupt image file {image_file} ({reason})")
            elif image.mode in _SIXTEEN_BIT_MODES:
                problems.append(
                    f"{ERROR}16-bit image {image_file} (mode {image.mode}): detectron2 expects "
                    "8-bit images; convert it to 8-bit RGB"
                )
            elif image.mode in _GRAY_MODES or image.mode == "P":
                kind = "grayscale" if image.mode != "P" else "palette"
                problems.append(
                    f"{WARNING}{kind} image {image_file} (mode {image.mode}); it is converted "
                    "to 3 channels when read"
                )
    if label_file:
        if not os.path.isfile(label_file):
            problems.append(f"{ERROR}missing label file: {label_file}")
        else:
            label, reason = _open(label_file)
            if label is None:
                problems.append(f"{ERROR}unreadable or corrupt label file {label_file} ({reason})")
            elif label.mode == "P":
                problems.append(
                    f"{ERROR}palette label file {label_file}: detectron2 reads labels as "
                    "grayscale, turning palette indices into colour luminance; write the "
                    "indices as a grayscale PNG (e.g. datasets/prepare_voc.py)"
                )
                label = None
            elif label.mode not in ("L", "1") + _SIXTEEN_BIT_MODES:
                problems.append(
                    f"{ERROR}label file {label_file} has mode {label.mode} "
                    f"({len(label.getbands())} channels); expected one channel of class ids"
                )
                label = None

    if label is not None:
        values = np.unique(np.asarray(label).astype(np.int64))
        bad = values[((values >= num_classes) & (values != ignore_label)) | (values < 0)]
        if len(bad):
            problems.append(
                f"{ERROR}label file {label_file} has values outside 0..{num_classes - 1} "
                f"and the ignore label {ignore_label}: {_format_values(bad.tolist())}"
            )
    if image is not None and label is not None and image.size != label.size:
        problems.append(
            f"{ERROR}size mismatch: image {image_file} is {image.size[0]}x{image.size[1]} "
            f"but label {label_file} is {label.size[0]}x{label.size[1]} (width x height)"
        )
    if image is not None and "height" in record and "width" in record:
        expected = (int(record["width"]), int(record["height"]))
        if image.size != expected:
            problems.append(
                f"{ERROR}size mismatch: image {image_file} is {image.size[0]}x{image.size[1]} "
                f"but its record says {expected[0]}x{expected[1]} (width x height)"
            )
    return problems


def check_sem_seg_dataset(
    dataset_dicts: Iterable[dict],
    num_classes: int,
    ignore_label: int = 255,
    progress: bool = True,
    num_workers: int = 4,
) -> List[str]:
    """Check every record of a semantic segmentation dataset and report all problems.

    Every image and label file is decoded completely. Problems found:

    * errors: missing image or label file (or record key), unreadable/corrupt file, label
      values that are neither ``< num_classes`` nor ``ignore_label`` (with the values),
      image/label size mismatch and image size different from the record's height/width
      (with both sizes), 16-bit images, palette or multi-channel label files;
    * warnings: grayscale (or palette) images, which are converted to RGB when read.

    Args:
        dataset_dicts: detectron2 dataset dicts with ``file_name`` and ``sem_seg_file_name``.
        num_classes: number of classes; valid label values are ``0 .. num_classes - 1``.
        ignore_label: the label value excluded from training and evaluation.
        progress: show a tqdm progress bar.
        num_workers: threads decoding files in parallel (0 or 1: no threads).

    Returns:
        One message per problem, in record order, each starting with ``"error: "`` or
        ``"warning: "``; empty when the dataset is fine.
    """
    from tqdm import tqdm

    records = list(dataset_dicts)
    problems: List[str] = []

    def check(item: Tuple[int, dict]) -> List[str]:
        return _check_record(item[0], item[1], num_classes, ignore_label)

    bar = tqdm(total=len(records), desc="checking", unit="img", disable=not progress)
    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for found in pool.map(check, enumerate(records)):
                problems.extend(found)
                bar.update(1)
    else:
        for item in enumerate(records):
            problems.extend(check(item))
            bar.update(1)
    bar.close()
    return problems
