"""Generate a small synthetic street-scene dataset in the exact Cityscapes layout.

The dataset lands in ROOT/cityscapes/{leftImg8bit,gtFine}/{train,val}/CITY/ and is read
unchanged by detectron2's builtin ``cityscapes_fine_sem_seg_{train,val}`` datasets and by the
Cityscapes evaluator, once ``DETECTRON2_DATASETS=ROOT`` is exported. A second run with the
same parameters does nothing. The absolute ROOT is the only thing printed on stdout, so::

    export DETECTRON2_DATASETS=$(python datasets/generate_synthetic_cityscapes.py)
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from dyn_seg.synthetic import generate_synthetic_cityscapes
from dyn_seg.utils.cli import add_dataset_root


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_root(parser, "datasets/synthetic", "to write ROOT/cityscapes into, i.e. the "
                     "folder to export as DETECTRON2_DATASETS")
    parser.add_argument("--num-train", type=int, default=24, help="train frames (default 24)")
    parser.add_argument("--num-val", type=int, default=8, help="val frames (default 8)")
    parser.add_argument("--height", type=int, default=128, help="image height (default 128)")
    parser.add_argument("--width", type=int, default=256, help="image width (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Generate the dataset and print its root."""
    args = parse_args(argv)
    try:
        root = generate_synthetic_cityscapes(
            args.root,
            num_train=args.num_train,
            num_val=args.num_val,
            height=args.height,
            width=args.width,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Synthetic Cityscapes ready; use it with: export DETECTRON2_DATASETS={root}",
          file=sys.stderr)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
