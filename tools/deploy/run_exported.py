#!/usr/bin/env python
"""Run an exported model: ``.onnx`` in ONNX Runtime (CPU provider), ``.pt2`` / ``.ts`` with
plain torch (no dyn_seg model code runs).

The program is :mod:`dyn_seg.tools.run_exported` (``--help`` describes it)::

    python tools/deploy/run_exported.py --model output/export/tiny/model.onnx --generate 3
    python tools/deploy/run_exported.py --model DIR/model.pt2 --input frames/ --output labels/
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.run_exported import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
