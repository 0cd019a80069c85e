"""Write PASCAL VOC 2012 labels as grayscale class-index PNGs for detectron2.

VOC's ``SegmentationClass`` PNGs are palette images; detectron2's DatasetMapper reads
labels with ``PIL.Image.convert("L")``, which turns palette colours into luminance and loses
the class ids. This writes ``VOC2012/SegmentationClassTrainIds/*.png`` (values 0..20, 255 on
borders) from ``SegmentationClass`` and, where present, the SBD-augmented
``SegmentationClassAug``; the ``voc_2012_sem_seg_*`` datasets read those files.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from dyn_seg.data.voc import convert_voc_labels
from dyn_seg.utils.cli import add_dataset_root


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_root(parser, "datasets", "holding VOC2012/")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing labels")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Convert the labels."""
    args = parse_args(argv)
    voc_root = os.path.join(os.path.expanduser(args.root), "VOC2012")
    if not os.path.isdir(voc_root):
        print(f"error: {voc_root} does not exist; see datasets/README.md for the layout",
              file=sys.stderr)
        return 2
    try:
        written = convert_voc_labels(
            voc_root, progress=not args.no_progress, overwrite=args.overwrite
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {written} label files to {os.path.join(voc_root, 'SegmentationClassTrainIds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
