#!/usr/bin/env python
"""Create the Cityscapes files that detectron2 trains on but the download lacks
(``*_gtFine_labelTrainIds.png`` and the panoptic ground truth).

The program is :mod:`dyn_seg.tools.prepare_cityscapes` (``--help`` describes the files)::

    python datasets/prepare_cityscapes.py --root /data/datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.prepare_cityscapes import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
