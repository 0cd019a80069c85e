"""Checks of instance annotations (detectron2's ``annotations`` of a dataset dict).

detectron2 meets a degenerate polygon deep inside its mapper (``PolygonMasks``:
``AssertionError: Cannot create a polygon from 4 coordinates``) or a NaN box inside the
loss, naming no file. :func:`annotation_problems` lists such annotations of one record, for
the training mapper (:class:`~dyn_seg.data.task_mappers.InstanceDatasetMapper`, which stops
on the first) and the dataset checker (which lists them all).
"""
from __future__ import annotations

import math
from typing import Dict, List

__all__ = ["annotation_problems"]


def _finite(values) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def annotation_problems(record: Dict) -> List[str]:
    """Problems of the instance annotations of ``record`` (empty when they are usable):
    polygons with fewer than 3 points, an odd number of coordinates or non-finite ones,
    boxes that are not 4 finite numbers, segmentations of an unknown kind."""
    problems = []
    where = record.get("file_name", "a record")
    for k, ann in enumerate(record.get("annotations", []) or []):
        label = f"image {where}: annotation {k} (category_id {ann.get('category_id')})"
        box = ann.get("bbox")
        if box is not None and (len(box) != 4 or not _finite(box)):
            problems.append(f"{label} has the box {list(box)}; a box is 4 finite numbers")
        seg = ann.get("segmentation")
        if seg is None or isinstance(seg, dict):  # no mask, or COCO RLE
            continue
        if not isinstance(seg, list):
            problems.append(f"{label} has a segmentation of type {type(seg).__name__}; "
                            "expected a list of polygons or a COCO RLE dict")
            continue
        for j, poly in enumerate(seg):
            n = len(poly) if hasattr(poly, "__len__") else 0
            if n < 6 or n % 2 or not _finite(poly):
                problems.append(
                    f"{label} has a degenerate polygon {j} of {n} coordinates "
                    f"({list(poly)[:8]}{' ...' if n > 8 else ''}); a polygon needs at least "
                    "3 points given as x0, y0, x1, y1, ... finite numbers: fix or remove it"
                )
    return problems
