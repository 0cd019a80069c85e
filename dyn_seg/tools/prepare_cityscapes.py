"""Create the Cityscapes files that detectron2 trains on but the download lacks.

1. ``*_gtFine_labelTrainIds.png`` (semantic segmentation): cityscapesscripts'
   ``createTrainIdLabelImgs`` rasterises every ``gtFine/*/*/*_gtFine_polygons.json`` with the
   train-id mapping of cityscapesscripts' ``labels.py``.
2. ``gtFine/cityscapes_panoptic_{train,val}.json`` and ``gtFine/cityscapes_panoptic_{train,val}/``
   (panoptic segmentation, read by ``cityscapes_fine_panoptic_*``): cityscapesscripts'
   ``createPanopticImgs`` converts the ``*_gtFine_instanceIds.png`` files.

ROOT defaults to $DETECTRON2_DATASETS, else ``datasets``. Needed once after downloading the
real dataset; the synthetic generator already writes all of these files (running this
script on generated data rewrites the same files).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from dyn_seg.data.panoptic import create_cityscapes_panoptic
from dyn_seg.utils.cli import add_dataset_root


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_root(parser, "datasets", "holding cityscapes/")
    parser.add_argument(
        "--skip-panoptic",
        action="store_true",
        help="only create the labelTrainIds files, not the panoptic ground truth",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Check the folder, point cityscapesscripts at it and convert the labels."""
    args = parse_args(argv)
    cs_root = os.path.abspath(os.path.join(os.path.expanduser(args.root), "cityscapes"))
    gt_dir = os.path.join(cs_root, "gtFine")
    if not os.path.isdir(gt_dir):
        print(
            f"error: {gt_dir} does not exist. Expected the Cityscapes dataset under "
            f"{cs_root}/{{leftImg8bit,gtFine}}/{{train,val}}/CITY/ (set DETECTRON2_DATASETS "
            "or pass --root; see datasets/README.md for how to download it).",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(os.path.join(cs_root, "leftImg8bit")):
        print(f"warning: {cs_root}/leftImg8bit is missing; training also needs the images",
              file=sys.stderr)
    # cityscapesscripts finds the dataset through this variable, read when main() runs.
    os.environ["CITYSCAPES_DATASET"] = cs_root
    from cityscapesscripts.preparation import createTrainIdLabelImgs

    createTrainIdLabelImgs.main()
    print(f"\nWrote labelTrainIds under {gt_dir}")
    if not args.skip_panoptic:
        try:
            written = create_cityscapes_panoptic(cs_root)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in written:
            print(f"Wrote {path} and its PNG folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
