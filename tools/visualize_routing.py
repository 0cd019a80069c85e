#!/usr/bin/env python
"""Draw the routes a Dynamic Routing model takes over a set of images.

The program itself is :mod:`dyn_seg.tools.visualize_routing` (``--help`` describes what
it writes; how to read the figure and every JSON field: docs/ROUTING.md)::

    python tools/visualize_routing.py --config-file configs/Cityscapes/Dynamic-L16-B.yaml \\
        --weights model_final.pth --dataset cityscapes_fine_sem_seg_val --max-images 100 \\
        --output routing_l16b
    python tools/visualize_routing.py --config-file my.yaml --input 'photos/*.jpg' \\
        --output routing_photos --per-image MODEL.DEVICE cpu
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.visualize_routing import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(1 if main()["failed"] else 0)
