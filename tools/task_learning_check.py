#!/usr/bin/env python
"""Learning check of the dynamic Panoptic-DeepLab and Mask R-CNN on generated street scenes.

The program is :mod:`dyn_seg.tools.task_learning_check` (``--help`` describes it)::

    python tools/task_learning_check.py --task panoptic --output output/check_panoptic
    python tools/task_learning_check.py --task instance --output output/check_instance \\
        --budget-config configs/Synthetic/MaskRCNN-Tiny-Budget.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.task_learning_check import main  # noqa: E402

if __name__ == "__main__":
    main()
