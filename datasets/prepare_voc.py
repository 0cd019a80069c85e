#!/usr/bin/env python
"""Write PASCAL VOC 2012 labels as grayscale class-index PNGs for detectron2.

The program is :mod:`dyn_seg.tools.prepare_voc` (``--help`` describes the files)::

    python datasets/prepare_voc.py --root /data/datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.prepare_voc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
