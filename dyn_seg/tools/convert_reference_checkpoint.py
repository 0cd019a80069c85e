"""Convert a checkpoint of the reference Dynamic Routing implementation to dyn_seg names.

Reads IN (a ``.pth`` of Megvii's ``dl_lib`` code: ``{"model": state_dict, ...}``, a bare
state dict, or ``{"state_dict": ...}``), renames its parameters with
``dyn_seg.checkpoint.convert_reference_state_dict`` against the model that ``--config-file``
(plus ``--opts``) describes, checks every name and shape, prints the report and writes
``{"model": state_dict}`` to OUT, ready for ``MODEL.WEIGHTS`` / ``DetectionCheckpointer``.

When a reference key has no dyn_seg parameter, a parameter got no value, or a shape
differs, nothing is written and the exit status is 1, unless ``--allow-partial`` (then the
keys that did map are written). The config must describe the checkpoint's network
(LAYER_NUM, INIT_CHANNEL, NORM, GATE, CELL_TYPE, NUM_CLASSES, ...): a wrong one shows up as
shape mismatches or missing keys.

Every reference checkpoint kind converts: Dynamic networks; Network-Fix networks (their
constant ``gate_weights_beta`` buffers are dropped; use a config with
``MODEL.GATE.GATE_ON False``); ``conv_3x3_basic`` cell operations; ImageNet-pretrained Fix
backbones with ``module.`` prefixes and a classification head (keys outside the backbone
and decoder are reported as "not part of a segmentation model" and left out).
``--init-dynamic-from-fix`` writes only the backbone of a Fix checkpoint, to start a
Dynamic network (a config with gates) from it: the gates and the decoder keep their
initial values and are listed as initialised fresh; a missing backbone parameter is still
an error.

Examples::

    python tools/convert_reference_checkpoint.py dynamic_l16_raw.pth l16_raw_dyn_seg.pth \\
        --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
    python tools/convert_reference_checkpoint.py ref.pth out.pth --config-file my.yaml \\
        --opts MODEL.BACKBONE.LAYER_NUM 33
    python tools/convert_reference_checkpoint.py layer16_fix_imagenet.pth l16_init.pth \\
        --config-file configs/Cityscapes/Dynamic-L16-Raw-ImageNet.yaml --init-dynamic-from-fix
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.checkpoint import convert_reference_state_dict, extract_state_dict
from dyn_seg.utils.cli import docstring_parser


def get_parser() -> argparse.ArgumentParser:
    parser = docstring_parser(__doc__)
    parser.add_argument("input", metavar="IN", help="reference checkpoint (.pth)")
    parser.add_argument("output", metavar="OUT", help="where to write the converted checkpoint")
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="config (yaml) of the network the checkpoint holds")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the keys that mapped even when others did not")
    parser.add_argument("--init-dynamic-from-fix", action="store_true",
                        help="write only the backbone (e.g. of an ImageNet-pretrained Fix "
                             "network) to initialise a Dynamic network; gates and decoder keep "
                             "their initial values")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="if IN cannot be read as plain tensors, unpickle it fully "
                             "(can run code from the file: only for files you trust)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.BACKBONE.LAYER_NUM 33 "
                             "(must come last)")
    return parser


def setup_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    cfg = get_dyn_seg_cfg(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"  # only the parameter names and shapes are needed
    cfg.freeze()
    return cfg


def read_checkpoint(path: str, allow_unsafe_pickle: bool) -> Dict[str, Any]:
    """Load ``path`` with ``weights_only=True``; fully unpickle only when allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"Reference checkpoint not found: {path}") from None
    except Exception as e:  # the restricted unpickler fails in many ways
        if not allow_unsafe_pickle:
            raise SystemExit(
                f"Cannot read {path} as plain tensors ({type(e).__name__}: {_error_line(e)}).\n"
                "It may hold pickled Python objects besides the weights. If you trust its "
                "source, run again with --allow-unsafe-pickle (unpickling can run code)."
            ) from None
    print(f"note: {path} needs full unpickling; loading it because of --allow-unsafe-pickle",
          file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # classes of another code base, truncated files, ...
        raise SystemExit(
            f"Cannot unpickle {path} ({type(e).__name__}: {_error_line(e)}). If it refers to "
            "classes of the code that saved it, load it there and save only its state dict "
            "(torch.save({'model': model.state_dict()}, path))."
        ) from None


def _error_line(error: Exception) -> str:
    """The informative line of a (possibly long) load error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unpickler error" in line:
            return line
    return lines[0] if lines else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"--config-file {args.config_file!r} does not exist.")
    checkpoint = read_checkpoint(args.input, args.allow_unsafe_pickle)
    try:
        state_dict = extract_state_dict(checkpoint)
    except (ValueError, AttributeError) as e:
        raise SystemExit(f"{args.input}: {e}") from None
    target = build_model(setup_cfg(args.config_file, args.opts)).state_dict()
    converted, report = convert_reference_state_dict(
        state_dict, target, backbone_only=args.init_dynamic_from_fix)
    print(report.summary())

    if not report.ok and not args.allow_partial:
        print(
            f"Not written: the checkpoint does not match the model of {args.config_file}. "
            "Fix the config (or --opts) to describe the checkpoint's network, or pass "
            "--allow-partial to write the keys that mapped.",
            file=sys.stderr,
        )
        return 1
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": converted}, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
