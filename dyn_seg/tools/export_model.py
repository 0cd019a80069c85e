"""Export a Dynamic Routing segmentor for deployment, keeping its per-image routing.

In the shape of detectron2's ``tools/deploy/export_model.py``. The exported program is
the graph plan (every routing decision a tensor): ``--variant conditional`` keeps each
cell's operations and each transition behind a conditional on its gates (``torch.cond``
in the ``.pt2``, ONNX ``If`` nodes), so closed paths are not computed, image by image;
``--variant dense`` computes every path and weights it (no control flow). Outputs:
``sem_seg`` (N, K, H, W) logits, ``gates`` (N, T) gate activations and ``gflops`` (N,)
real GFLOPs per image. The input size is fixed at export. See docs/DEPLOY.md.

Examples::

    python tools/export_model.py --config-file configs/Synthetic/Dynamic-Tiny.yaml \\
        --format onnx --export-method onnx-dynamo --output output/export/tiny \\
        --weights dyn_seg/model_zoo/weights/Dynamic-Tiny.pth --run 3
    python tools/export_model.py --config-file CONFIG --format pt2 \\
        --export-method torch-export --output DIR MODEL.WEIGHTS model_final.pth
    python tools/export_model.py --config-file CONFIG --format torchscript \\
        --export-method tracing --variant dense --output DIR --sample-image frame.png
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import List, Optional

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.export.exporters import EXPORT_METHODS, FORMATS
from dyn_seg.export.module import VARIANTS
from dyn_seg.export.pipeline import export_from_config
from dyn_seg.utils.cli import add_weights_and_opts, parse_size, parse_tool_args

# printed by fvcore/detectron2 imports, also those an export makes (detectron2.export for
# tracing): silenced for the whole run, as dyn_seg's own import silences its imports
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="FILE", help="dyn_seg config")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format")
    p.add_argument("--export-method", choices=EXPORT_METHODS, default="onnx-dynamo",
                   help="onnx-dynamo (.onnx), torch-export (.pt2), tracing (detectron2's "
                        "TracingAdapter + torch.jit.trace: .ts, or .onnx with the legacy "
                        "exporter; dense variant only)")
    p.add_argument("--variant", choices=VARIANTS, default=None,
                   help="conditional (closed paths skipped; default) or dense (every path "
                        "computed; the default and only choice of --export-method tracing)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="output folder (model file + model.json)")
    p.add_argument("--sample-image", default=None, metavar="FILE",
                   help="image that fixes the input size (default: a generated street scene)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="input size of the exported model (default: the sample image's size "
                        "after INPUT.MIN_SIZE_TEST resizing, rounded up to MAX_STRIDE)")
    p.add_argument("--run", type=int, default=0, metavar="N",
                   help="afterwards run the exported file in its runtime (ONNX Runtime for "
                        ".onnx) on the sample and N-1 generated scenes; print per-image GFLOPs "
                        "and the difference to eager PyTorch")
    add_weights_and_opts(p, "checkpoint to export (or MODEL.WEIGHTS; default: random init)")
    args = parse_tool_args(p, argv)
    if args.variant is None:
        args.variant = "dense" if args.export_method == "tracing" else "conditional"
    if args.size is not None:
        try:
            args.size = parse_size(args.size)
        except ValueError as e:
            p.error(f"--size: {e}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    try:
        result, rows = export_from_config(cfg, args.format, args.export_method, args.variant,
                                          args.output, args.weights, args.sample_image,
                                          args.size, args.run)
    except ValueError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"exported": result.path, **{k: result.metadata[k] for k in (
        "format", "export_method", "variant", "input_shape", "outputs")}}), flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
