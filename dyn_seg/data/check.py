"""Scan a dataset of any task for every problem before training starts.

:func:`check_sem_seg_dataset` opens every image and label of a list of detectron2 dataset
dicts and reports all problems at once rather than stopping at the first: missing or
unreadable files, label values that are neither a class nor the ignore label, image/label
size mismatches, 16-bit and float images and labels that detectron2 would misread.
:func:`check_dataset` does the same for panoptic (panoptic PNGs), instance (polygons,
boxes) and classification (class indices) datasets. Files are
read by :mod:`dyn_seg.data.reader`, exactly as the training loader reads them (EXIF
orientation included), so what this check accepts is what training accepts. Each message starts
with ``"error: "`` or ``"warning: "`` (see :func:`is_error`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .annotations import annotation_problems
from .reader import (
    DatasetFileError,
    image_to_array,
    label_to_array,
    label_values_outside,
    open_image_file,
    panoptic_to_array,
)

__all__ = ["TASKS", "check_dataset", "check_sem_seg_dataset", "is_error", "task_of_records"]

#: Tasks :func:`check_dataset` knows, by the record keys their loaders read.
TASKS = ("semantic", "panoptic", "instance", "classification")

ERROR = "error: "
WARNING = "warning: "
_MAX_LISTED_VALUES = 20
_GRAY_MODES = ("L", "LA", "1")


def _check_record_size(record: Dict, image_file: str, image, problems: List[str]) -> None:
    """An error when the image's (width, height) differs from the record's."""
    if image is not None and "height" in record and "width" in record:
        expected = (int(record["width"]), int(record["height"]))
        if image != expected:
            problems.append(
                f"{ERROR}size mismatch: image {image_file} is {image[0]}x{image[1]} "
                f"but its record says {expected[0]}x{expected[1]} (width x height)"
            )


def is_error(message: str) -> bool:
    """True for a problem that breaks training or evaluation, False for a warning."""
    return message.startswith(ERROR)


def _format_values(values: Sequence[int]) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED_VALUES])
    if len(values) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(values)} values)"
    return shown


def _read_image(image_file: str, problems: List[str]) -> Optional[Tuple[int, int]]:
    """(width, height) of the image as training reads it, or None (problems appended)."""
    if not os.path.isfile(image_file):
        problems.append(f"{ERROR}missing image file: {image_file}")
        return None
    try:
        image = open_image_file(image_file, "Image")
        if image.mode in _GRAY_MODES or image.mode == "P":
            kind = "grayscale" if image.mode != "P" else "palette"
            problems.append(
                f"{WARNING}{kind} image {image_file} (mode {image.mode}); it is converted "
                "to 3 channels when read"
            )
        # exactly the conversion training applies (and refuses what training refuses)
        array = image_to_array(image, "RGB", image_file)
    except DatasetFileError as e:
        problems.append(f"{ERROR}{e}")
        return None
    return array.shape[1], array.shape[0]


def _read_label(label_file: str, num_classes: int, ignore_label: int,
                problems: List[str]) -> Optional[Tuple[int, int]]:
    """(width, height) of the label map as training reads it, or None."""
    if not os.path.isfile(label_file):
        problems.append(f"{ERROR}missing label file: {label_file}")
        return None
    try:
        values = label_to_array(open_image_file(label_file, "Label"), label_file)
    except DatasetFileError as e:
        problems.append(f"{ERROR}{e}")
        return None
    bad = label_values_outside(values, num_classes, ignore_label)
    if len(bad):
        problems.append(
            f"{ERROR}label file {label_file} has values outside 0..{num_classes - 1} "
            f"and the ignore label {ignore_label}: {_format_values(bad.tolist())}"
        )
    elif not (values != ignore_label).any():
        problems.append(
            f"{WARNING}label file {label_file} has no pixel with a class id (every pixel is "
            f"the ignore label {ignore_label}): its image adds nothing to training, and a "
            "batch of such images has a loss of 0; check that the label file is the right one"
        )
    return values.shape[1], values.shape[0]


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

    image = _read_image(image_file, problems) if image_file else None
    label = _read_label(label_file, num_classes, ignore_label, problems) if label_file else None
    if image is not None and label is not None and image != label:
        problems.append(
            f"{ERROR}size mismatch: image {image_file} is {image[0]}x{image[1]} "
            f"but label {label_file} is {label[0]}x{label[1]} (width x height)"
        )
    _check_record_size(record, image_file, image, problems)
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
      (with both sizes), 16-bit or float single-channel images, palette or multi-channel
      label files;
    * warnings: grayscale (or palette) images, which are converted to RGB when read; label
      maps without a pixel of a class (every pixel ``ignore_label``).

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
    return check_dataset(dataset_dicts, "semantic", num_classes, ignore_label, progress,
                         num_workers)


def task_of_records(dataset_dicts: Sequence[dict]) -> str:
    """The task (one of :data:`TASKS`) whose loader reads these records, by their keys:
    ``pan_seg_file_name`` (panoptic), ``annotations`` (instance), ``label`` (classification),
    else semantic."""
    first = dataset_dicts[0] if len(dataset_dicts) else {}
    if "pan_seg_file_name" in first:
        return "panoptic"
    if "annotations" in first:
        return "instance"
    if "label" in first and "sem_seg_file_name" not in first:
        return "classification"
    return "semantic"


def _check_image_record(index: int, record: dict, problems: List[str]
                        ) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """The image of a record (its file and (width, height), or None), checked against the
    record's height and width."""
    image_file = record.get("file_name")
    if not image_file:
        problems.append(f"{ERROR}record {index} has no 'file_name'")
        return None, None
    image = _read_image(image_file, problems)
    _check_record_size(record, image_file, image, problems)
    return image_file, image


def _check_panoptic_record(index: int, record: dict, num_classes: int,
                           ignore_label: int) -> List[str]:
    """An image, its panoptic PNG (8-bit RGB, the image's size, every segment of
    ``segments_info`` present) and its semantic label map when the record names one."""
    problems: List[str] = []
    image_file, image = _check_image_record(index, record, problems)
    pan_file = record.get("pan_seg_file_name")
    if not pan_file:
        problems.append(f"{ERROR}record {index} ({image_file}) has no 'pan_seg_file_name'")
    elif not os.path.isfile(pan_file):
        problems.append(f"{ERROR}missing panoptic label file: {pan_file}")
    else:
        try:
            rgb = panoptic_to_array(open_image_file(pan_file, "Panoptic label"), pan_file)
        except DatasetFileError as e:
            problems.append(f"{ERROR}{e}")
        else:
            size = (rgb.shape[1], rgb.shape[0])
            if image is not None and size != image:
                problems.append(
                    f"{ERROR}size mismatch: image {image_file} is {image[0]}x{image[1]} "
                    f"but panoptic label {pan_file} is {size[0]}x{size[1]} (width x height)"
                )
            ids = set(np.unique(rgb.astype(np.int64) @ np.array([1, 256, 65536])).tolist())
            absent = [s["id"] for s in record.get("segments_info", []) if s["id"] not in ids]
            if absent:
                problems.append(
                    f"{WARNING}panoptic label {pan_file} lacks segments {absent[:10]} that "
                    "its JSON lists (they get no training target)"
                )
    label_file = record.get("sem_seg_file_name")
    if label_file:
        label = _read_label(label_file, num_classes, ignore_label, problems)
        if image is not None and label is not None and image != label:
            problems.append(
                f"{ERROR}size mismatch: image {image_file} is {image[0]}x{image[1]} "
                f"but label {label_file} is {label[0]}x{label[1]} (width x height)"
            )
    return problems


def _check_instance_record(index: int, record: dict, num_classes: int,
                           ignore_label: int) -> List[str]:
    """An image and its instance annotations (polygons, boxes)."""
    problems: List[str] = []
    _check_image_record(index, record, problems)
    problems.extend(f"{ERROR}{p}" for p in annotation_problems(record))
    return problems


def _check_classification_record(index: int, record: dict, num_classes: int,
                                 ignore_label: int) -> List[str]:
    """An image and its class index ``0 .. num_classes - 1``."""
    problems: List[str] = []
    image_file, _ = _check_image_record(index, record, problems)
    label = record.get("label")
    if not isinstance(label, int) or not 0 <= label < num_classes:
        problems.append(f"{ERROR}record {index} ({image_file}) has the label {label!r}, not a "
                        f"class index 0..{num_classes - 1}")
    return problems


_CHECKS = {
    "semantic": _check_record,
    "panoptic": _check_panoptic_record,
    "instance": _check_instance_record,
    "classification": _check_classification_record,
}


def check_dataset(
    dataset_dicts: Iterable[dict],
    task: str,
    num_classes: int = 0,
    ignore_label: int = 255,
    progress: bool = True,
    num_workers: int = 4,
) -> List[str]:
    """Check every record of a dataset of ``task`` (one of :data:`TASKS`, see
    :func:`task_of_records`) for what its training loader reads, and report all problems.

    * semantic: as :func:`check_sem_seg_dataset`;
    * panoptic: the image, the panoptic PNG (readable 8-bit RGB of the image's size; a
      segment of ``segments_info`` missing from it is a warning) and the semantic label
      map when the record names one (``sem_seg_file_name``, values checked as above);
    * instance: the image and each annotation (degenerate polygons, non-finite boxes);
    * classification: the image and the class index (``0 .. num_classes - 1``).

    Images are checked as for semantic segmentation (readable, 8-bit, the record's size).
    Returns one message per problem, in record order, each starting with ``"error: "`` or
    ``"warning: "``.
    """
    from tqdm import tqdm

    if task not in _CHECKS:
        raise ValueError(f"task {task!r} is not known; use one of {', '.join(TASKS)}")
    check_record = _CHECKS[task]
    records = list(dataset_dicts)
    problems: List[str] = []

    def check(item: Tuple[int, dict]) -> List[str]:
        return check_record(item[0], item[1], num_classes, ignore_label)

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
