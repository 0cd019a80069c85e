#!/usr/bin/env python
"""Train one config at several budget settings and plot accuracy against real FLOPs.

The sweep itself is :mod:`dyn_seg.benchmark.budget_sweep` (``--help`` describes it)::

    python tools/budget_sweep.py --config-file configs/Synthetic/Budget-Sweep.yaml \\
        --points raw 0.8:0.6 0.8:0.4 0.8:0.2 0.8:0.1 --jobs 2 --output output/budget_sweep
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.benchmark.budget_sweep import main  # noqa: E402

if __name__ == "__main__":
    main(handle_sigterm=True)
