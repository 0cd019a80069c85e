"""Panoptic ground truth in the layout detectron2's builtin Cityscapes panoptic datasets read.

detectron2's ``cityscapes_fine_panoptic_{train,val}`` read
``gtFine/cityscapes_panoptic_{split}.json`` and the PNGs in ``gtFine/cityscapes_panoptic_{split}/``.
cityscapesscripts' ``createPanopticImgs.convert2panoptic`` writes exactly these from the
``*_gtFine_instanceIds.png`` files (instance pixels ``labelId * 1000 + k``); this module runs it
for the splits that are present, on the real dataset and on the generated one alike.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import List, Optional, Sequence

__all__ = [
    "PANOPTIC_SPLITS",
    "create_cityscapes_panoptic",
    "panoptic_files",
    "register_cityscapes_tasks",
]

#: Splits converted when present (the test split has no instance annotations).
PANOPTIC_SPLITS = ("train", "val")


def panoptic_files(gt_dir: str, split: str):
    """``(json file, png folder)`` of the panoptic ground truth of ``split`` under ``gt_dir``."""
    base = os.path.join(gt_dir, f"cityscapes_panoptic_{split}")
    return base + ".json", base


def create_cityscapes_panoptic(
    cs_root: str, splits: Optional[Sequence[str]] = None, verbose: bool = False
) -> List[str]:
    """Write the panoptic PNGs and JSON of every split of ``cs_root/gtFine`` that has
    instance-id files; return the JSON files written.

    Args:
        cs_root: the ``cityscapes`` folder (holding ``gtFine/{split}/CITY/``).
        splits: splits to convert; None: those of ``PANOPTIC_SPLITS`` that exist.
        verbose: let cityscapesscripts print its progress.
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    gt_dir = os.path.join(os.path.abspath(cs_root), "gtFine")
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(
            f"{gt_dir} does not exist: expected the Cityscapes ground truth under "
            f"{cs_root}/gtFine/{{train,val}}/CITY/."
        )
    if splits is None:
        splits = [s for s in PANOPTIC_SPLITS if os.path.isdir(os.path.join(gt_dir, s))]
    written = []
    for split in splits:
        split_dir = os.path.join(gt_dir, split)
        has_ids = os.path.isdir(split_dir) and any(
            name.endswith("_gtFine_instanceIds.png")
            for city in os.listdir(split_dir)
            if os.path.isdir(os.path.join(split_dir, city))
            for name in os.listdir(os.path.join(split_dir, city))
        )
        if not has_ids:
            # convert2panoptic would exit the interpreter on a split without files
            raise FileNotFoundError(
                f"No *_gtFine_instanceIds.png under {split_dir}/CITY/: the panoptic ground "
                "truth is made from them. Download gtFine completely (it ships them)."
            )
        out = io.StringIO()
        with contextlib.redirect_stdout(None if verbose else out):
            convert2panoptic(gt_dir, None, False, [split])
        written.append(panoptic_files(gt_dir, split)[0])
    return written


def register_cityscapes_tasks(root: str, prefix: str) -> dict:
    """Register the panoptic and instance datasets of a Cityscapes-layout folder under
    new names, with the metadata of detectron2's builtin ones.

    detectron2 registers ``cityscapes_fine_{panoptic,instance_seg}_{train,val}`` once, for
    ``$DETECTRON2_DATASETS`` read at import; this registers the same datasets of another
    ``root`` (e.g. generated data) as ``{prefix}_panoptic_{split}`` and
    ``{prefix}_instance_seg_{split}``. Returns ``{task_split: name}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .task_loaders import load_cityscapes_instances_checked, load_cityscapes_panoptic_checked

    cs = os.path.join(os.path.abspath(root), "cityscapes")
    names = {}
    for split in PANOPTIC_SPLITS:
        image_dir = os.path.join(cs, "leftImg8bit", split)
        gt_dir = os.path.join(cs, "gtFine", split)
        gt_json, pan_dir = panoptic_files(os.path.join(cs, "gtFine"), split)

        pan_meta = MetadataCatalog.get(f"cityscapes_fine_panoptic_{split}").as_dict()
        pan_meta.pop("name")
        pan_meta.update(panoptic_root=pan_dir, image_root=image_dir, panoptic_json=gt_json,
                        gt_dir=gt_dir)
        name = f"{prefix}_panoptic_{split}"
        DatasetCatalog.register(
            name, lambda x=image_dir, y=pan_dir, z=gt_json, m=dict(pan_meta):
            load_cityscapes_panoptic_checked(x, y, z, m)
        )
        MetadataCatalog.get(name).set(**pan_meta)
        names[f"panoptic_{split}"] = name

        inst_meta = MetadataCatalog.get(f"cityscapes_fine_instance_seg_{split}").as_dict()
        inst_meta.pop("name")
        inst_meta.update(image_dir=image_dir, gt_dir=gt_dir)
        name = f"{prefix}_instance_seg_{split}"
        DatasetCatalog.register(
            name, lambda x=image_dir, y=gt_dir: load_cityscapes_instances_checked(
                x, y, from_json=True, to_polygons=True
            )
        )
        MetadataCatalog.get(name).set(**inst_meta)
        names[f"instance_seg_{split}"] = name
    return names
