#!/usr/bin/env python
"""FLOPs and parameter counts of a Dynamic Routing model at one input size, for every
routed meta-architecture.

The program itself is :mod:`dyn_seg.tools.analyze_model` (``--help`` describes the
analytic and fvcore counts and the parameter parts)::

    python tools/analyze_model.py --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
    python tools/analyze_model.py --size 768x768 --format json MODEL.GATE.GATE_ON False
    python tools/analyze_model.py --config-file my.yaml --weights model_final.pth \\
        --image frankfurt_000000_000294_leftImg8bit.png
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from dyn_seg.tools.analyze_model import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
