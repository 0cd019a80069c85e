"""Generate a small classification dataset (ten texture / shape classes) in the ImageNet layout.

The images land in ROOT/imagenet/{train,val}/CLASS/*.JPEG and are read by the datasets
``imagenet_train`` / ``imagenet_val`` that dyn_seg registers, once
``DETECTRON2_DATASETS=ROOT`` is exported before training. The absolute ROOT is the only
thing printed on stdout, so::

    export DETECTRON2_DATASETS=$(python datasets/generate_synthetic_imagenet.py)
    python train_net.py --config-file configs/Synthetic/Classification-Tiny.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from dyn_seg.data.imagenet import generate_synthetic_imagenet
from dyn_seg.utils.cli import add_dataset_root


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_root(parser, "datasets/synthetic", "to write ROOT/imagenet into, i.e. the "
                     "folder to export as DETECTRON2_DATASETS")
    parser.add_argument("--num-train", type=int, default=60,
                        help="train images per class (default 60)")
    parser.add_argument("--num-val", type=int, default=20, help="val images per class (default 20)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Generate the dataset and print its root."""
    args = parse_args(argv)
    try:
        root = generate_synthetic_imagenet(args.root, num_train=args.num_train,
                                           num_val=args.num_val, size=args.size, seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(os.path.abspath(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
