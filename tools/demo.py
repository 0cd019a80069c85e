#!/usr/bin/env python
"""Segment images with a Dynamic Routing network and save colour overlays or label maps.

The program itself is :mod:`dyn_seg.tools.demo` (``--help`` describes the inputs, the
output formats and the overlays)::

    python tools/demo.py --config-file configs/Synthetic/Dynamic-Tiny.yaml \\
        --input datasets/synthetic/cityscapes/leftImg8bit/val --output output/demo \\
        --weights output/main_job/train/model_final.pth --show-flops --show-route
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
