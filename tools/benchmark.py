#!/usr/bin/env python
"""Speed, memory, operator counts and real GFLOPs of a Dynamic Routing model's plans.

The program is :mod:`dyn_seg.tools.benchmark` (``--help`` describes the tasks and modes)::

    python tools/benchmark.py --device cpu --threads 2 --size 256 512 --gates open
    python tools/benchmark.py --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml \\
        --device cuda --size 1024 2048 --gates paths:0.5 --task inference
    python tools/benchmark.py --task train --train-size 768 768 --train-batch 8 \\
        --train-modes faithful channels_last-bf16 compile --device cuda
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
