#!/usr/bin/env python
"""Collect the parts of ``scripts/gpu_check.sh`` into one JSON file and a markdown table.

The program is :mod:`dyn_seg.tools.gpu_report` (``--help`` describes it)::

    python tools/gpu_report.py OUTDIR --elapsed SECONDS   # OUTDIR/gpu_check.{json,md}
    python tools/gpu_report.py --env cuda                  # the environment record
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
# importing dyn_seg (first) lets detectron2 and fvcore load without deprecation noise
from dyn_seg.tools.gpu_report import main  # noqa: E402

if __name__ == "__main__":
    main()
