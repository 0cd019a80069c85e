#!/usr/bin/env python
"""Generate a small classification dataset (ten texture / shape classes) in the ImageNet layout.

The program is :mod:`dyn_seg.tools.generate_synthetic_imagenet` (``--help`` describes the
layout). The absolute ROOT is the only thing printed on stdout, so::

    export DETECTRON2_DATASETS=$(python datasets/generate_synthetic_imagenet.py)
    python train_net.py --config-file configs/Synthetic/Classification-Tiny.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.generate_synthetic_imagenet import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
