"""Cityscapes panoptic and instance dataset loaders whose errors name the bad file.

detectron2's loaders fail on a damaged ground truth file with a bare ``JSONDecodeError``
(truncated panoptic JSON), an ``AssertionError`` holding a path (missing panoptic PNG) or
shapely's ``ValueError: A linearring requires at least 4 coordinates`` from a worker
process (degenerate polygon in a ``*_polygons.json``), none naming the file or the fix.
:func:`load_cityscapes_panoptic_checked` and :func:`load_cityscapes_instances_checked`
run detectron2's loaders and turn these into :class:`DatasetFileError` naming the file;
:func:`explain_task_dataset_errors` puts them behind detectron2's builtin
``cityscapes_fine_{panoptic,instance_seg}_{train,val}``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .reader import _CHECK_TOOL, DatasetFileError

__all__ = [
    "explain_task_dataset_errors",
    "load_cityscapes_instances_checked",
    "load_cityscapes_panoptic_checked",
]

_PREPARE = ("create the panoptic files again with python datasets/prepare_cityscapes.py "
            "(it runs cityscapesscripts' createPanopticImgs)")
_MAX_LISTED = 5


def load_cityscapes_panoptic_checked(image_dir: str, gt_dir: str, gt_json: str,
                                     meta: Dict) -> List[Dict]:
    """detectron2's ``load_cityscapes_panoptic``; a missing or unreadable panoptic JSON and
    panoptic PNGs it lists that do not exist are :class:`DatasetFileError`."""
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    if not os.path.isfile(gt_json):
        raise DatasetFileError(f"panoptic JSON file not found: {gt_json}; {_PREPARE}.", gt_json)
    try:
        with open(gt_json) as f:
            json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFileError(
            f"cannot parse the panoptic JSON file {gt_json} (truncated or not JSON): "
            f"{type(e).__name__}: {e}; {_PREPARE}.", gt_json) from e
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(2, "No such directory", image_dir)  # a dataset root problem
    try:
        dicts = load_cityscapes_panoptic(image_dir, gt_dir, gt_json, meta)
    except AssertionError as e:
        raise DatasetFileError(
            f"a file of the panoptic dataset {gt_json} is missing: {e}; {_PREPARE}. "
            f"{_CHECK_TOOL}.", gt_json) from e
    missing = [d["pan_seg_file_name"] for d in dicts if not os.path.isfile(d["pan_seg_file_name"])]
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED]) + (" ..." if len(missing) > _MAX_LISTED else "")
        raise DatasetFileError(
            f"{len(missing)} of the {len(dicts)} panoptic label PNGs listed in {gt_json} do "
            f"not exist: {shown}; {_PREPARE}.", missing[0])
    return dicts


def load_cityscapes_instances_checked(image_dir: str, gt_dir: str, from_json: bool = True,
                                      to_polygons: bool = True) -> List[Dict]:
    """detectron2's ``load_cityscapes_instances``; when it fails on a file (e.g. a
    degenerate polygon in a ``*_polygons.json``), the files are read again one by one to
    raise :class:`DatasetFileError` naming the one that fails."""
    from detectron2.data.datasets import cityscapes as cs

    try:
        return cs.load_cityscapes_instances(image_dir, gt_dir, from_json, to_polygons)
    except FileNotFoundError:
        raise  # a missing folder: a dataset root problem (dyn_seg.data.roots)
    except Exception as first:  # raised in a worker process, without the file
        for files in cs._get_cityscapes_files(image_dir, gt_dir):
            try:
                cs._cityscapes_files_to_dict(files, from_json, to_polygons)
            except Exception as e:
                bad = files[3] if from_json else files[2]  # the polygons JSON / instance ids
                raise DatasetFileError(
                    f"cannot read the instance annotations of {files[0]} from {bad}: "
                    f"{type(e).__name__}: {e}. Fix or remove the offending object (e.g. a "
                    f"polygon with fewer than 3 points). {_CHECK_TOOL}.", bad) from e
        raise first


def explain_task_dataset_errors() -> None:
    """Load detectron2's builtin Cityscapes panoptic and instance datasets with the checked
    loaders (same records)."""
    for split in ("train", "val"):
        name = f"cityscapes_fine_panoptic_{split}"
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            DatasetCatalog.remove(name)
            DatasetCatalog.register(
                name, lambda x=meta.image_root, y=meta.panoptic_root, z=meta.panoptic_json,
                m=meta.as_dict(): load_cityscapes_panoptic_checked(x, y, z, m))
        name = f"cityscapes_fine_instance_seg_{split}"
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            DatasetCatalog.remove(name)
            DatasetCatalog.register(
                name, lambda x=meta.image_dir, y=meta.gt_dir:
                load_cityscapes_instances_checked(x, y, from_json=True, to_polygons=True))
