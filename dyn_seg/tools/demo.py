"""Segment images with a Dynamic Routing network and save colour overlays or label maps.

    python tools/demo.py --config-file configs/Synthetic/Dynamic-Tiny.yaml \\
        --input datasets/synthetic/cityscapes/leftImg8bit/val --output output/demo \\
        --weights output/main_job/train/model_final.pth --show-flops --show-route

``--input`` takes image files, folders (searched recursively) and glob patterns. Outputs
mirror the inputs' paths relative to their common folder (``a/x.png`` -> ``OUTPUT/a/x.png``),
so images of the same name in different folders never overwrite each other. With
``--output-format overlay`` (default) each output is a colour overlay; with
``--show-flops`` the image's real GFLOPs are printed on it (top left), with ``--show-route``
the image's route through the routing space is drawn in the bottom right corner (below the
image when the image is too small for a legible route). ``--output-format trainIds`` writes
the predicted class ids (semantic and panoptic models) as 8-bit PNGs
(``NAME_trainIds.png``); ``labelIds`` writes
Cityscapes label ids (``CITY_SEQ_FRAME_labelIds.png``), the files the Cityscapes
evaluation script and test server expect (README: "Submitting to the Cityscapes test
server"). A file that cannot be read or segmented is reported (file and reason) and the
others are processed; the exit status is then 1. Panoptic and instance models are drawn
with their segments; classifiers are refused (nothing to segment), as are label-map formats
for instance models.
"""
import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tqdm
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.utils.colormap import colormap
from PIL import Image

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.data.reader import DatasetFileError, check_image_array, read_image_file
from dyn_seg.modeling.meta_arch.routed import routed_model
from dyn_seg.utils.cli import (
    add_weights_and_opts,
    find_images,
    float_in,
    output_paths,
    parse_tool_args,
)
from dyn_seg.utils.cli import build_predictor as _build_predictor
from dyn_seg.visualization import overlay_route
from dyn_seg.visualization.overlay import SegmentationVisualizer
from dyn_seg.visualization.stats import RoutingSpace
from dyn_seg.visualization.tasks import draws_task_overlay, render_task_prediction, task_metadata

OUTPUT_FORMATS = ("overlay", "trainIds", "labelIds")
_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders or glob patterns")
    parser.add_argument("--output", default="output/demo", help="folder for the outputs")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default="overlay",
                        help="overlay: colour overlays (default); trainIds: predicted class "
                        "ids as 8-bit PNGs; labelIds: Cityscapes label ids named for the "
                        "Cityscapes evaluation script and test server")
    parser.add_argument("--show-flops", action="store_true",
                        help="print each image's real GFLOPs on its overlay")
    parser.add_argument("--show-route", action="store_true",
                        help="draw each image's route small in the bottom right corner")
    parser.add_argument("--route-size", type=float_in(0, 1, low_open=True), default=0.35,
                        metavar="FRACTION",
                        help="width of the route drawing as a share of the image width "
                        "(0..1, default 0.35; at least a legible minimum width)")
    parser.add_argument("--alpha", type=float_in(0, 1), default=0.6,
                        help="opacity of the segmentation colours (0..1)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="allow the weights to be a pickled .pkl/.pyth file (only for "
                        "files you trust)")
    parser.add_argument("--allow-partial-weights", action="store_true",
                        help="predict even when the weights leave parameters missing or "
                        "wrongly shaped (they keep their random initialisation)")
    add_weights_and_opts(parser, "trained model (.pth); the same as the override "
                         "MODEL.WEIGHTS FILE")
    args = parse_tool_args(parser, argv)
    if args.output_format != "overlay" and (args.show_flops or args.show_route):
        parser.error("--show-flops and --show-route draw on overlays; leave them out with "
                     f"--output-format {args.output_format}")
    return args


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = get_dyn_seg_cfg(args.config_file, opts)
    cfg.freeze()
    return cfg


def check_task(cfg: CfgNode, output_format: str) -> None:
    """Refuse, with what to do instead, the models and formats this demo cannot write:
    classifiers (no segmentation to draw) and label maps of instance models (no class map)."""
    from dyn_seg.tasks import task_for

    arch = cfg.MODEL.META_ARCHITECTURE
    task = task_for(cfg)
    if task.overlay is None:
        raise ValueError(
            f"tools/demo.py draws segmentations, but MODEL.META_ARCHITECTURE={arch} is an "
            "image classifier: evaluate it with train_net.py --eval-only (top-1 / top-5) or "
            "draw its routes with tools/visualize_routing.py."
        )
    if output_format != "overlay" and task.overlay == "instances":
        raise ValueError(
            f"--output-format {output_format} writes a class id per pixel, but "
            f"MODEL.META_ARCHITECTURE={arch} predicts instances only (no class map): use "
            "--output-format overlay, or a panoptic or semantic model for label maps."
        )


def collect_inputs(patterns: Sequence[str]) -> List[str]:
    """Image paths from files, folders (recursively) and glob patterns, sorted per item."""
    return [path for path, _ in find_images(patterns)]


def build_predictor(cfg: CfgNode, allow_unsafe_pickle: bool = False,
                    allow_partial_weights: bool = False) -> DefaultPredictor:
    """A ``DynSegPredictor`` with ``MODEL.WEIGHTS`` (safe loading, clear errors, reference
    checkpoints converted)."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained model, e.g. "
                         "--weights output/main_job/train/model_final.pth")
    return _build_predictor(cfg, cfg.MODEL.WEIGHTS, allow_unsafe_pickle=allow_unsafe_pickle,
                            allow_partial_weights=allow_partial_weights)


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


def label_writer(output_format: str, cfg: CfgNode
                 ) -> Tuple[str, Callable[[str], str], Callable[[np.ndarray], np.ndarray]]:
    """``(suffix, rename, to_ids)`` of a label output format: the file-name suffix, the
    stem renaming and the mapping from predicted class ids to the written ids."""
    def strip(stem: str) -> str:
        if stem.endswith(_CITYSCAPES_IMAGE_SUFFIX):
            return stem[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
        return stem

    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if output_format == "trainIds":
        if num_classes > 256:
            raise ValueError(f"--output-format trainIds writes 8-bit PNGs; NUM_CLASSES="
                             f"{num_classes} does not fit.")
        return "_trainIds.png", strip, lambda labels: labels.astype(np.uint8)
    if num_classes != 19:
        raise ValueError(
            f"--output-format labelIds maps the 19 Cityscapes training classes to Cityscapes "
            f"label ids, but MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}; use "
            "--output-format trainIds for other datasets."
        )
    try:
        from cityscapesscripts.helpers.labels import trainId2label
    except ImportError as e:
        raise ValueError("--output-format labelIds needs cityscapesscripts "
                         "(pip install cityscapesscripts)") from e
    lut = np.array([trainId2label[i].id for i in range(19)], dtype=np.uint8)
    return "_labelIds.png", strip, lambda labels: lut[labels]


def render(image_bgr: np.ndarray, labels: np.ndarray, metadata: Metadata, *,
           alpha: float = 0.6, text: Optional[str] = None,
           route: Optional[Tuple[dict, RoutingSpace]] = None,
           route_size: float = 0.35) -> np.ndarray:
    """RGB overlay of the class map ``labels`` (H, W) on ``image_bgr``.

    Class names are written in black or white on a box of their class colour. ``text`` is
    written in the top left corner; ``route`` (the image's ``"routing"`` output and the
    model's routing space) is drawn ``route_size`` of the image width wide (at least a
    legible minimum) in the bottom right corner, or below the image when it does not fit.
    """
    vis = SegmentationVisualizer(image_bgr[:, :, ::-1], metadata)
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
    labels = None
    if "sem_seg" in prediction:  # instance models have no class map
        labels = prediction["sem_seg"].argmax(dim=0).cpu().numpy()
    return labels, prediction


def routing_space(predictor: DefaultPredictor) -> RoutingSpace:
    """``(init_spec, cell_specs)`` of the predictor's Dynamic Routing backbone."""
    try:
        network = routed_model(predictor.model).routed_network
    except TypeError as e:
        raise ValueError(f"--show-route needs a routed model: {e} Leave out --show-route "
                         "for other models.") from None
    return network.init_spec, network.cell_specs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns 0 when every image was written, 1 when some failed."""
    args = parse_args(argv)
    cfg = setup_cfg(args)
    check_task(cfg, args.output_format)
    found = find_images(args.input)
    if args.output_format == "overlay":
        suffix, rename, to_ids = ".png", None, None
    else:
        suffix, rename, to_ids = label_writer(args.output_format, cfg)
    targets = output_paths([rel for _, rel in found], args.output, suffix, rename)
    predictor = build_predictor(cfg, args.allow_unsafe_pickle, args.allow_partial_weights)
    metadata = class_metadata(cfg)
    space = routing_space(predictor) if args.show_route else None
    task_overlay = draws_task_overlay(cfg)
    failures: List[Tuple[str, str]] = []
    for (path, _), out_path in zip(tqdm.tqdm(found, desc="demo", unit="img", file=sys.stderr),
                                   targets):
        try:
            image = check_image_array(read_image_file(path, "BGR"), path)
            labels, prediction = segment(predictor, image)
        except (DatasetFileError, ValueError, RuntimeError, OSError) as e:
            # one bad file must not stop a run over thousands: report it, go on
            reason = f"{type(e).__name__}: {e}"
            failures.append((path, reason))
            tqdm.tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
            continue
        flops = prediction.get("flops", {})
        if to_ids is not None:
            picture = to_ids(labels)
        else:
            text = None
            if args.show_flops and "real" in flops:
                text = f"{flops['real']:.3f} GFLOPs"
            route = (prediction["routing"], space) if space is not None else None
            if task_overlay:  # panoptic or instance segmentation
                picture = render_task_prediction(image, prediction, task_metadata(cfg),
                                                 alpha=args.alpha, text=text)
                if route is not None:
                    picture = overlay_route(picture, route[0], routing_space=space,
                                            fraction=args.route_size)
            else:
                picture = render(image, labels, metadata, alpha=args.alpha, text=text,
                                 route=route, route_size=args.route_size)
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        Image.fromarray(picture).save(out_path)
        gflops = f", {flops['real']:.3f} real GFLOPs" if "real" in flops else ""
        tqdm.tqdm.write(f"{path}: {image.shape[1]}x{image.shape[0]}{gflops} -> {out_path}",
                        file=sys.stdout)
    if failures:
        print(f"error: {len(failures)} of {len(found)} images failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
