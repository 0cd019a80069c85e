#!/usr/bin/env python
"""Segment images with a Dynamic Routing network and save colour overlays.

    python tools/demo.py --config-file configs/Synthetic/Dynamic-Tiny.yaml \\
        --input datasets/synthetic/cityscapes/leftImg8bit/val --output output/demo \\
        --show-flops --show-route --opts MODEL.WEIGHTS output/main_job/train/model_final.pth

``--input`` takes image files, folders (searched recursively) and glob patterns. Each
overlay is written to ``--output`` as ``<image name>.png``; with ``--show-flops`` the
image's real GFLOPs (what the gates actually computed) are printed on it (top left), with
``--show-route`` the image's route through the routing space is drawn small in the bottom
right corner (as in ``tools/visualize_routing.py --per-image``). Images of any size work:
the predictor resizes them to ``INPUT.MIN_SIZE_TEST`` and returns the segmentation at the
original size.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tqdm
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.visualization import overlay_route
from dyn_seg.visualization.stats import RoutingSpace
from dyn_seg.visualization.tasks import has_task_output, render_task_prediction, task_metadata

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders or glob patterns")
    parser.add_argument("--output", default="output/demo", help="folder for the overlays")
    parser.add_argument("--show-flops", action="store_true",
                        help="print each image's real GFLOPs on its overlay")
    parser.add_argument("--show-route", action="store_true",
                        help="draw each image's route small in the bottom right corner")
    parser.add_argument("--route-size", type=float, default=0.35, metavar="FRACTION",
                        help="width of the route drawing as a share of the image width "
                        "(0..1, default 0.35)")
    parser.add_argument("--alpha", type=float, default=0.6,
                        help="opacity of the segmentation colours (0..1)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="allow MODEL.WEIGHTS to be a pickled .pkl/.pyth file (only for "
                        "files you trust)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs (last option), e.g. "
                        "--opts MODEL.WEIGHTS model_final.pth")
    args = parser.parse_args(argv)
    if not 0.0 < args.route_size <= 1.0:
        parser.error(f"--route-size must be in (0, 1], got {args.route_size}")
    return args


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def collect_inputs(patterns: Sequence[str]) -> List[str]:
    """Image paths from files, folders (recursively) and glob patterns, sorted per item."""
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [
                os.path.join(root, name)
                for root, _, names in os.walk(pattern)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        else:
            found = glob.glob(os.path.expanduser(pattern))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image file.")
        paths.extend(sorted(found))
    return paths


def build_predictor(cfg: CfgNode, allow_unsafe_pickle: bool = False) -> DefaultPredictor:
    """detectron2's ``DefaultPredictor``, with weights loaded by ``DynSegCheckpointer`` (safe
    loading, clear errors, reference checkpoints converted)."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained model, e.g. "
                         "--opts MODEL.WEIGHTS output/main_job/train/model_final.pth")
    empty = cfg.clone()
    empty.defrost()
    empty.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(empty)
    DynSegCheckpointer(predictor.model, allow_unsafe_pickle=allow_unsafe_pickle).load(weights)
    return predictor


def class_metadata(cfg: CfgNode) -> Metadata:
    """Class names and colours of the config's test dataset (numbers when it has none).

    detectron2's Visualizer picks a random colour for a class without one, different for
    every image and every run; classes without colours get fixed ones here: Cityscapes'
    own palette on Cityscapes datasets (detectron2 registers their names only), else
    detectron2's colour table.
    """
    names = [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    name, evaluator_type = "dyn_seg_demo", None
    if cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if meta.get("stuff_classes"):
            if meta.get("stuff_colors"):
                return meta
            names, name = list(meta.stuff_classes), meta.name
            evaluator_type = meta.get("evaluator_type")
    return Metadata(name=name, stuff_classes=names,
                    stuff_colors=_fixed_colors(len(names), evaluator_type))


def _fixed_colors(num_classes: int, evaluator_type: Optional[str]) -> List[List[int]]:
    if evaluator_type == "cityscapes_sem_seg" and num_classes == 19:
        try:
            from cityscapesscripts.helpers.labels import trainId2label

            return [list(trainId2label[i].color) for i in range(num_classes)]
        except ImportError:  # cityscapesscripts is optional here
            pass
    table = colormap(rgb=True, maximum=255).astype(int).tolist()
    return [table[i % len(table)] for i in range(num_classes)]


def render(image_bgr: np.ndarray, labels: np.ndarray, metadata: Metadata, *,
           alpha: float = 0.6, text: Optional[str] = None,
           route: Optional[Tuple[dict, RoutingSpace]] = None,
           route_size: float = 0.35) -> np.ndarray:
    """RGB overlay (H, W, 3) of the class map ``labels`` (H, W) on ``image_bgr``.

    ``text`` is written in the top left corner; ``route`` (the image's ``"routing"``
    output and the model's routing space) is drawn ``route_size`` of the image width wide
    in the bottom right corner.
    """
    vis = Visualizer(image_bgr[:, :, ::-1], metadata)
    vis.draw_sem_seg(labels, alpha=alpha)
    if text:
        vis.draw_text(text, (4, 4), color="w", horizontal_alignment="left")
    overlay = vis.output.get_image()
    if route is not None:
        alphas, space = route
        overlay = overlay_route(overlay, alphas, routing_space=space, fraction=route_size)
    return overlay


def segment(predictor: DefaultPredictor, image_bgr: np.ndarray) -> Tuple[np.ndarray, dict]:
    """Class map (H, W) of a BGR image at its own size, and the model's inference output
    (``"flops"``, ``"routing"``, ...) for it."""
    prediction = predictor(image_bgr)
    labels = prediction["sem_seg"].argmax(dim=0).cpu().numpy()
    return labels, prediction


def routing_space(predictor: DefaultPredictor) -> RoutingSpace:
    """``(init_spec, cell_specs)`` of the predictor's Dynamic Routing backbone."""
    backbone = predictor.model.backbone
    backbone = getattr(backbone, "bottom_up", backbone)  # the routed network under an FPN
    if not hasattr(backbone, "cell_specs"):
        raise ValueError(
            f"--show-route needs a Dynamic Routing backbone; MODEL.BACKBONE.NAME builds "
            f"{type(backbone).__name__}. Leave out --show-route for other models."
        )
    return backbone.init_spec, backbone.cell_specs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    cfg = setup_cfg(args)
    paths = collect_inputs(args.input)
    predictor = build_predictor(cfg, args.allow_unsafe_pickle)
    metadata = class_metadata(cfg)
    space = routing_space(predictor) if args.show_route else None
    os.makedirs(args.output, exist_ok=True)
    for path in tqdm.tqdm(paths, desc="demo", unit="img", file=sys.stderr):
        image = read_image(path, format="BGR")
        prediction = predictor(image)
        flops = prediction.get("flops", {})
        text = None
        if args.show_flops and "real" in flops:
            text = f"{flops['real']:.3f} GFLOPs"
        route = (prediction["routing"], space) if space is not None else None
        if has_task_output(prediction):  # panoptic or instance segmentation
            overlay = render_task_prediction(image, prediction, task_metadata(cfg),
                                             alpha=args.alpha, text=text)
            if route is not None:
                overlay = overlay_route(overlay, route[0], routing_space=space,
                                        fraction=args.route_size)
        else:
            labels = prediction["sem_seg"].argmax(dim=0).cpu().numpy()
            overlay = render(image, labels, metadata, alpha=args.alpha, text=text,
                             route=route, route_size=args.route_size)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(overlay).save(out_path)
        gflops = f", {flops['real']:.3f} real GFLOPs" if "real" in flops else ""
        tqdm.tqdm.write(f"{path}: {image.shape[1]}x{image.shape[0]}{gflops} -> {out_path}",
                        file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
