#!/usr/bin/env python
"""Train or evaluate a Dynamic Routing network.

    python train_net.py --config-file configs/Cityscapes/Dynamic-L16-B.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --resume               # continue a run
    python train_net.py --config-file CONFIG --new-run-subdir       # OUTPUT_DIR/run_N
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth

Datasets are read from $DETECTRON2_DATASETS (export it before running). With
``--num-gpus N`` on a machine without GPUs, N CPU processes train together (gloo).
The program is :mod:`dyn_seg.tools.train_net`; the training logic lives in
:mod:`dyn_seg.engine`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a source checkout
# imports dyn_seg first: detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.train_net import launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main()
