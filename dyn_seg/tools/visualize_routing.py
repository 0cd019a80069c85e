"""Draw the routes a Dynamic Routing model takes over a set of images.

Runs every image through the model exactly as at inference (detectron2's
``DefaultPredictor``: test-time resize, input format, batch of one) and writes

* ``OUTPUT/routing.png``: the routing space, each path drawn with the share of images in
  which it is active (line width) and its mean gate activation (colour), dropped cells in
  red;
* ``OUTPUT/routing.json``: the same statistics, per-layer activation rates, dropped-cell
  counts and the real / expected GFLOPs (mean, min, max);
* with ``--per-image``: ``OUTPUT/images/NNNNN_NAME.png``, each image beside its own route.

How to read the figure and every JSON field: docs/ROUTING.md.

Examples::

    python tools/visualize_routing.py --config-file configs/Cityscapes/Dynamic-L16-B.yaml \\
        --weights model_final.pth --dataset cityscapes_fine_sem_seg_val --max-images 100 \\
        --output routing_l16b
    python tools/visualize_routing.py --config-file my.yaml --input 'photos/*.jpg' \\
        --output routing_photos --per-image MODEL.DEVICE cpu
"""
import argparse
import json
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import tqdm
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.data.reader import DatasetFileError, read_image_file
from dyn_seg.modeling.meta_arch.routed import routed_model
from dyn_seg.utils.cli import (
    IMAGE_EXTENSIONS,
    add_weights_and_opts,
    docstring_parser,
    find_images,
    int_at_least,
    parse_tool_args,
)
from dyn_seg.utils.cli import build_predictor as _build_predictor
from dyn_seg.visualization import (
    RoutingStats,
    draw_image_route,
    draw_routing,
    format_gflops,
)

logger = logging.getLogger("dyn_seg.visualize_routing")


def get_parser() -> argparse.ArgumentParser:
    parser = docstring_parser(__doc__, plain_literals=True)
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="model config (yaml); default: the built-in Dynamic L16 defaults")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME",
                        help="a registered detectron2 dataset, e.g. cityscapes_fine_sem_seg_val")
    source.add_argument("--input", metavar="FOLDER_OR_GLOB",
                        help="a folder (searched recursively for images) or a glob pattern "
                             "(quote it), e.g. 'frames/*.png'")
    parser.add_argument("--max-images", type=int_at_least(0, "0: all"), default=0, metavar="N",
                        help="use at most N images (0: all)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for routing.png, routing.json (and images/)")
    parser.add_argument("--per-image", action="store_true",
                        help="also write one PNG per image with its route beside the image")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation when no --weights are given")
    parser.add_argument("--allow-partial-weights", action="store_true",
                        help="draw routes even when --weights leaves parameters missing or "
                             "wrongly shaped (they keep their random initialisation)")
    add_weights_and_opts(parser, "model weights (.pth, dyn_seg or reference names); "
                         "default: random initialisation (seeded by --seed)")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is available: running on the CPU.",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    # weights are loaded by DynSegCheckpointer (safe loading, reference-name conversion)
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def list_images(args: argparse.Namespace) -> List[str]:
    """Image paths from ``--dataset`` or ``--input``, cut to ``--max-images``."""
    if args.dataset:
        if args.dataset not in DatasetCatalog.list():
            raise SystemExit(
                f"--dataset {args.dataset!r} is not registered; registered datasets include "
                f"{sorted(DatasetCatalog.list())[:12]} ... (register yours with "
                "detectron2.data.DatasetCatalog.register, or use --input FOLDER)."
            )
        paths = [d["file_name"] for d in DatasetCatalog.get(args.dataset)]
    else:
        try:
            paths = [path for path, _ in find_images([args.input])]
        except FileNotFoundError:
            paths = []
    if not paths:
        source = f"--dataset {args.dataset}" if args.dataset else f"--input {args.input}"
        raise SystemExit(
            f"no images found for {source}; in folders these extensions are searched: "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    if args.max_images > 0:
        paths = paths[: args.max_images]
    return paths


def build_predictor(cfg: CfgNode, weights: str, seed: int,
                    allow_partial_weights: bool = False) -> DefaultPredictor:
    torch.manual_seed(seed)
    return _build_predictor(cfg, weights, require_weights=False,
                            allow_partial_weights=allow_partial_weights)


def run_images(predictor: DefaultPredictor, paths: Sequence[str], failures: List[str]
               ) -> Iterator[Tuple[str, np.ndarray, dict]]:
    """Yield ``(path, BGR image, inference output)`` per image, with a progress bar; an image
    that cannot be read or that the model refuses (e.g. a size it cannot process) is
    logged, appended to ``failures`` and skipped, so the other images' statistics are
    still written."""
    for path in tqdm.tqdm(paths, desc="routing", unit="img", file=sys.stderr):
        try:
            image = read_image_file(path, "BGR")
            output = predictor(image)
        except (DatasetFileError, ValueError, RuntimeError) as e:
            reason = e if isinstance(e, DatasetFileError) else f"{type(e).__name__}: {e}"
            logger.error("skipped %s: %s", path, reason)
            failures.append(f"{path}: {reason}")
            continue
        yield path, image, output


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the tool; returns the statistics written to ``routing.json``."""
    args = parse_tool_args(get_parser(), argv)
    cfg = setup_cfg(args)
    paths = list_images(args)
    predictor = build_predictor(cfg, args.weights, args.seed, args.allow_partial_weights)
    network = routed_model(predictor.model).routed_network
    space = (network.init_spec, network.cell_specs)
    stats = RoutingStats(space)
    os.makedirs(args.output, exist_ok=True)
    failures: List[str] = []
    for index, (path, image, output) in enumerate(run_images(predictor, paths, failures)):
        stats.add(output)
        if args.per_image:
            name = os.path.splitext(os.path.basename(path))[0]
            title = os.path.basename(path)
            if "flops" in output:
                flops = output["flops"]
                title += (f": real {format_gflops(flops['real'])} GFLOPs, expected "
                          f"{format_gflops(flops['expected'])} GFLOPs")
            draw_image_route(
                image, output["routing"],
                os.path.join(args.output, "images", f"{index:05d}_{name}.png"),
                routing_space=space, title=title,
            )

    result = stats.to_dict()
    result["config_file"] = args.config_file or None
    result["weights"] = args.weights or None
    result["source"] = f"dataset:{args.dataset}" if args.dataset else f"input:{args.input}"
    result["failed"] = failures
    with open(os.path.join(args.output, "routing.json"), "w") as f:
        json.dump(result, f, indent=1)
    draw_routing(stats, os.path.join(args.output, "routing.png"))
    logger.info("wrote %s", os.path.join(args.output, "routing.{png,json}"))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(1 if main()["failed"] else 0)
