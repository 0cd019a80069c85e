#!/usr/bin/env python
"""Convert a checkpoint of the reference Dynamic Routing implementation to dyn_seg names.

The program is :mod:`dyn_seg.tools.convert_reference_checkpoint` (``--help`` describes it)::

    python tools/convert_reference_checkpoint.py dynamic_l16_raw.pth l16_raw_dyn_seg.pth \\
        --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
    python tools/convert_reference_checkpoint.py layer16_fix_imagenet.pth l16_init.pth \\
        --config-file configs/Cityscapes/Dynamic-L16-Raw-ImageNet.yaml --init-dynamic-from-fix
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.convert_reference_checkpoint import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
