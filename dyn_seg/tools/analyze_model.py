"""FLOPs and parameter counts of a Dynamic Routing model at one input size, for every
routed meta-architecture: semantic segmentor (head: the decoder, with its context module if
any), classifier (global pooling + linear layer), Panoptic-DeepLab (semantic and instance
heads), Mask R-CNN (FPN + RPN head; the per-detection box and mask heads are counted in the
forward figures only, as they depend on the detections).

Reports, in GFLOPs (1e9 multiply-adds, one fused multiply-add = one FLOP):

* analytic, reference counting rules (conv + norm + ReLU + pooling, no upsampling or
  elementwise ops), with every path open: expected (cells) and real (cells + gates + stem +
  head), and the parts;
* analytic for one actual forward on a random image (or --image, resized to the size):
  that image's real and expected FLOPs, as the model reports them at inference;
* fvcore's FlopCountAnalysis of the same forward (routed network + the heads that run once
  per image, on the normalised, padded image): convolutions, batch norm (2 per element
  with affine), bilinear upsampling (4 per output element), adaptive average pooling
  (1 per input element), and ReLU (1 per element, a handle added here to match the
  reference rule); elementwise adds and the gates' scaling multiplications are not
  counted (listed under "uncounted_operators");
* parameters per part (stem, init cell, each layer's cells, all gates, head) with fvcore's
  parameter_count; the parts sum to the total. Gates sit inside the cells but are counted
  apart, so that "total - gates" is the Network-Fix (no gates) count.

FLOPs are counted at --size padded to a multiple of MODEL.BACKBONE.MAX_STRIDE;
INPUT.FIX_SIZE_FOR_FLOPS of the config is ignored here (the size is the question asked).

Examples::

    python tools/analyze_model.py --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
    python tools/analyze_model.py --size 768x768 --format json MODEL.GATE.GATE_ON False
    python tools/analyze_model.py --config-file my.yaml --weights model_final.pth \\
        --image frankfurt_000000_000294_leftImg8bit.png
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis, parameter_count
from fvcore.nn.jit_handles import elementwise_flop_counter
from tabulate import tabulate
from torch import nn

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.modeling.cost.stats import open_path_counts, open_rates
from dyn_seg.modeling.execution.export_guards import allow_capture
from dyn_seg.modeling.meta_arch.analysis import all_open_flops
from dyn_seg.modeling.meta_arch.routed import RoutedModel, routed_model
from dyn_seg.modeling.routing.gate import SoftGate
from dyn_seg.utils.cli import (
    add_size_argument,
    add_weights_and_opts,
    docstring_parser,
    parse_tool_args,
)

logger = logging.getLogger("dyn_seg.analyze_model")

GIGA_PER_MEGA = 1e-3


def get_parser() -> argparse.ArgumentParser:
    parser = docstring_parser(__doc__)
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="model config (yaml); default: the built-in Dynamic L16 defaults")
    add_size_argument(parser, default=(1024, 2048), minimum=32, help="input size")
    parser.add_argument("--image", default="", metavar="FILE",
                        help="run the forward on this image (resized to --size) instead of a "
                             "random one")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation and the random image")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="output format (default: table)")
    add_weights_and_opts(parser, "model weights (.pth); default: random initialisation (--seed)")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # analytic counts and tracing need no accelerator
    cfg.INPUT.FIX_SIZE_FOR_FLOPS = []  # count at the requested size
    cfg.freeze()
    return cfg


def load_image(path: str, size: Tuple[int, int], seed: int) -> np.ndarray:
    """(H, W, 3) uint8 BGR image: ``path`` resized to ``size``, or seeded noise."""
    if not path:
        return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    image = read_image(path, format="BGR")
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def analysed_model(model: nn.Module) -> RoutedModel:
    """``model`` as a routed model; a clear error (exit) for any other model."""
    try:
        return routed_model(model)
    except TypeError as e:
        raise SystemExit(f"tools/analyze_model.py: {e}") from None


class BackboneHead(nn.Module):
    """Routed network + the heads that run once per image on normalised, padded images
    (N, 3, H, W) -> the heads' tensors (:meth:`RoutedModel.trace_heads`).

    The tensor-in, tensor-out form that jit tracing (and so fvcore) needs; the
    meta-architecture's dict inputs and routing outputs stay outside.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        routed = analysed_model(model)
        self.backbone = routed.routed_network
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.trace_heads(self.backbone(images))


def fvcore_flops(model: nn.Module, images: torch.Tensor) -> Dict:
    """fvcore's count of :class:`BackboneHead` on ``images``, in GFLOPs."""
    relu = elementwise_flop_counter(0, 1)
    analysis = (
        FlopCountAnalysis(BackboneHead(model), (images,))
        .set_op_handle("aten::relu", relu, "aten::relu_", relu)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    # fvcore traces one forward pass to count it: the route it freezes is the one counted
    with warnings.catch_warnings(), allow_capture():
        warnings.simplefilter("ignore")  # jit tracing's deprecation notices
        total = analysis.total()
    backbone = analysis.by_module()["backbone"]
    return {
        "total": total * 1e-9,
        "backbone": backbone * 1e-9,
        "head": (total - backbone) * 1e-9,
        "by_operator": {k: v * 1e-9 for k, v in sorted(analysis.by_operator().items())},
        "uncounted_operators": dict(sorted(analysis.unsupported_ops().items())),
    }


def parameter_counts(model: nn.Module) -> Dict:
    """Parameters of stem, init cell, each layer's cells, all gates and the heads
    (everything outside the routed network); the parts sum to the total."""
    network = analysed_model(model).routed_network
    prefix = next(name for name, m in model.named_modules() if m is network)
    base = prefix + "." if prefix else ""
    counts = parameter_count(model)
    gates = {name: counts[name] for name, m in model.named_modules() if isinstance(m, SoftGate)}

    def without_gates(part: str) -> int:
        inside = sum(v for k, v in gates.items() if k.startswith(part + "."))
        return counts.get(part, 0) - inside

    layers = {str(l): without_gates(f"{base}cells.{l}") for l in range(len(network.cells))}
    parts = {
        "stem": counts.get(f"{base}stem", 0),
        "init_cell": without_gates(f"{base}init_cell"),
        "layers": layers,
        "gates": sum(gates.values()),
        "head": counts[""] - counts.get(prefix, 0),
    }
    accounted = parts["stem"] + parts["init_cell"] + sum(layers.values())
    accounted += parts["gates"] + parts["head"]
    parts["other"] = counts[""] - accounted
    parts["total"] = counts[""]
    parts["without_gates"] = counts[""] - parts["gates"]
    return parts


def analyze(cfg: CfgNode, size: Tuple[int, int], weights: str = "", image_path: str = "",
            seed: int = 0) -> Dict:
    """The full report as a JSON-serialisable dict."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    routed = analysed_model(model)  # a clear error for other models
    if weights:
        DynSegCheckpointer(model).load(weights)
    model.eval()
    network = routed.routed_network
    image = load_image(image_path, size, seed)
    inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32")),
               "height": size[0], "width": size[1]}]
    with torch.no_grad():
        output = model(inputs)[0]
        images = routed.network_input(inputs)
        fvcore = fvcore_flops(model, images)
    padded = routed.counting_size(images.shape)
    all_open = {k: v * GIGA_PER_MEGA for k, v in all_open_flops(model, padded).items()}
    head = getattr(model, "sem_seg_head", None)
    context = getattr(head, "context_flops", None)
    if context is not None:  # PSP / ASPP, part of the segmentation head
        all_open["context"] = context(padded) * GIGA_PER_MEGA
    return {
        "weights": weights or None,
        "input_size": list(size),
        "counting_size": list(padded),
        "model": {
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            "head": ", ".join(type(m).__name__ for n, m in model.named_children()
                              if m is not network and not n.startswith("backbone")
                              and any(True for _ in m.parameters())),
            "layer_num": len(network.cell_specs),
            "init_channel": network.init_spec.channels,
            "gate_on": network.gate_on,
            "small_gate": network.small_gate,
        },
        "analytic_gflops": {
            "rules": "reference: conv + norm + ReLU + pooling; no upsampling, no elementwise",
            "all_open": all_open,
            "forward": {
                "image": image_path or "random",
                "real": output["flops"]["real"],
                "expected": output["flops"]["expected"],
                "active_path_rate": open_rates(open_path_counts(output["routing"]))[0],
            },
        },
        "fvcore_gflops": fvcore,
        "parameters": parameter_counts(model),
    }


def format_table(report: Dict) -> str:
    """Human-readable tables of :func:`analyze`'s report."""
    a, f, p = report["analytic_gflops"], report["fvcore_gflops"], report["parameters"]
    size = "x".join(map(str, report["counting_size"]))
    flops = [
        ["analytic, all paths open", "expected (cells)", a["all_open"]["expected"]],
        ["", "real (cells + gates + stem + head)", a["all_open"]["real"]],
        ["", "  gates", a["all_open"]["gates"]],
        ["", "  stem", a["all_open"]["stem"]],
        ["", "  head", a["all_open"]["head"]],
    ]
    if "context" in a["all_open"]:
        flops.append(["", "    context module (in head)", a["all_open"]["context"]])
    flops += [
        [f"analytic, forward ({a['forward']['image']})", "expected", a["forward"]["expected"]],
        ["", "real", a["forward"]["real"]],
        ["fvcore, same forward", "total", f["total"]],
    ]
    flops += [["", f"  {op}", v] for op, v in f["by_operator"].items()]
    params = [["stem", p["stem"]], ["init cell (without gate)", p["init_cell"]]]
    params += [[f"layer {l} cells (without gates)", n] for l, n in p["layers"].items()]
    params += [["gates", p["gates"]], ["head", p["head"]]]
    if p["other"]:
        params.append(["other", p["other"]])
    params += [["total", p["total"]], ["total without gates (Network-Fix)", p["without_gates"]]]
    uncounted = ", ".join(f"{k} x{v}" for k, v in f["uncounted_operators"].items()) or "none"
    m = report["model"]
    gates = ("small gates" if m["small_gate"] else "gates") if m["gate_on"] else "no gates"
    return "\n\n".join([
        f"{report['config_file']}: {m['meta_architecture']} ({m['head']}), "
        f"L{m['layer_num']}, C{m['init_channel']}, {gates}; "
        f"FLOPs counted at {size}",
        tabulate(flops, headers=["GFLOPs", "", ""], floatfmt=".5g"),
        f"not counted by fvcore: {uncounted}",
        tabulate(params, headers=["parameters", ""], intfmt=","),
    ])


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the tool; prints the report and returns it."""
    args = parse_tool_args(get_parser(), argv)
    size = args.size
    report = {"config_file": args.config_file or "built-in defaults"}
    report.update(analyze(setup_cfg(args), size, args.weights, args.image, args.seed))
    if args.format == "json":
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
