#!/usr/bin/env python
"""Check a registered dataset (semantic, panoptic, instance or classification) for every
problem at once; exits with status 1 when there are errors.

The program is :mod:`dyn_seg.tools.check_dataset` (``--help`` lists the checks)::

    python datasets/check_dataset.py --dataset cityscapes_fine_sem_seg_train \\
        --dataset cityscapes_fine_sem_seg_val
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.check_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
