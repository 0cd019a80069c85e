#!/usr/bin/env python
"""Export a Dynamic Routing segmentor for deployment, keeping its per-image routing.

The program is :mod:`dyn_seg.tools.export_model` (``--help`` describes it; docs/DEPLOY.md)::

    python tools/export_model.py --config-file configs/Synthetic/Dynamic-Tiny.yaml \\
        --format onnx --export-method onnx-dynamo --output output/export/tiny \\
        --weights dyn_seg/model_zoo/weights/Dynamic-Tiny.pth --run 3
    python tools/export_model.py --config-file CONFIG --format pt2 \\
        --export-method torch-export --output DIR MODEL.WEIGHTS model_final.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.export_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
