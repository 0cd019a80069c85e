#!/usr/bin/env python
"""Create Cityscapes' ``*_gtFine_labelTrainIds.png`` files, which detectron2 trains on.

Runs cityscapesscripts' ``createTrainIdLabelImgs`` on ROOT/cityscapes (it rasterises every
``gtFine/*/*/*_gtFine_polygons.json`` with the train-id mapping of cityscapesscripts'
``labels.py``). ROOT defaults to $DETECTRON2_DATASETS, else ``datasets``. Needed once after
downloading the real dataset; the synthetic generator already writes these files.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
        help="dataset root holding cityscapes/ (default: $DETECTRON2_DATASETS, else datasets)",
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
