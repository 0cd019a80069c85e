"""Checks run once when training starts: settings that train, but train the wrong thing.

* a training crop (``INPUT.CROP.SIZE``) larger than every training image after the
  short-edge resize: every crop is mostly padding, each step computes many times the pixels
  it needs, and the budget loss counts FLOPs at the padded size;
* ``MODEL.BUDGET.FLOPS_ALL`` far from what the network computes with every path open at
  the size FLOPs are counted at (the crop, or ``INPUT.FIX_SIZE_FOR_FLOPS``): the budget
  loss ``(E[FLOPs] / FLOPS_ALL - LOSS_MU)^2`` then measures the wrong thing (e.g. 85
  instead of 0.09) and drives the gates shut or leaves them unconstrained.

Each problem is a warning (logged, and returned) with the numbers and the fix; training
goes on, since both settings may be meant.
"""
from __future__ import annotations

import logging
import random
from typing import Iterable, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from PIL import Image

__all__ = ["check_crop_size", "check_flops_all", "run_startup_checks"]

logger = logging.getLogger(__name__)

#: FLOPS_ALL may differ from the all-open FLOPs by this factor before a warning.
FLOPS_ALL_TOLERANCE = 1.5
_SAMPLED_IMAGES = 32


def _image_sizes(dataset_names: Iterable[str]) -> List[Tuple[int, int]]:
    """(H, W) of (a sample of) the training images: from the records' ``height``/``width``,
    else from the image headers of up to ``_SAMPLED_IMAGES`` records."""
    sizes: List[Tuple[int, int]] = []
    for name in dataset_names:
        records = DatasetCatalog.get(name)
        if all("height" in r and "width" in r for r in records):
            sizes.extend((int(r["height"]), int(r["width"])) for r in records)
            continue
        for record in random.Random(0).sample(records, min(len(records), _SAMPLED_IMAGES)):
            with Image.open(record["file_name"]) as image:  # reads the header only
                sizes.append((image.height, image.width))
    return sizes


def _largest_resize(size: Tuple[int, int], min_sizes: Sequence[int], max_size: int
                    ) -> Tuple[int, int]:
    """The largest (H, W) that detectron2's ``ResizeShortestEdge`` makes of ``size``."""
    h, w = size
    scale = max(min_sizes) / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_crop_size(cfg: CfgNode, image_sizes: Sequence[Tuple[int, int]]) -> Optional[str]:
    """A warning when the absolute training crop is larger than every training image after
    the short-edge resize, else None."""
    crop = cfg.INPUT.CROP
    if not crop.ENABLED or crop.TYPE != "absolute" or not image_sizes:
        return None
    crop_h, crop_w = (int(v) for v in crop.SIZE)
    resized = [_largest_resize(s, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN)
               for s in image_sizes]
    max_h, max_w = max(r[0] for r in resized), max(r[1] for r in resized)
    if crop_h <= max_h and crop_w <= max_w:
        return None
    common = max(set(image_sizes), key=image_sizes.count)
    fit_h, fit_w = min(crop_h, max_h), min(crop_w, max_w)
    waste = (crop_h * crop_w) / (fit_h * fit_w)
    return (
        f"INPUT.CROP.SIZE ({crop_h}, {crop_w}) is larger than every training image after "
        f"resizing: the images are {common[1]}x{common[0]} (width x height) and "
        f"INPUT.MIN_SIZE_TRAIN={tuple(cfg.INPUT.MIN_SIZE_TRAIN)} makes them at most "
        f"{max_w}x{max_h}, so every crop is padded: each step computes {waste:.1f}x the "
        f"pixels it needs and the budget loss counts FLOPs at the padded size. Fix: "
        f"INPUT.CROP.SIZE \"({fit_h}, {fit_w})\" (or smaller), or larger INPUT.MIN_SIZE_TRAIN."
    )


def check_flops_all(cfg: CfgNode, model) -> Optional[str]:
    """A warning when ``MODEL.BUDGET.FLOPS_ALL`` differs from the network's all-open
    expected FLOPs at the counting size by more than :data:`FLOPS_ALL_TOLERANCE`x."""
    from ..modeling.meta_arch.analysis import all_open_flops
    from ..modeling.meta_arch.routed import routed_model

    budget = cfg.MODEL.BUDGET
    if not budget.CONSTRAIN:
        return None
    model = routed_model(model)  # unwraps DDP; a clear error for other models
    network = model.routed_network
    crop = None
    if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        crop = tuple(int(v) for v in cfg.INPUT.CROP.SIZE)
    if network.flops_size is None and crop is None:
        return None  # FLOPs are counted at each image's own size: nothing fixed to compare
    # the one counting-size rule: INPUT.FIX_SIZE_FOR_FLOPS when set, else the crop's size
    size = network.counting_size(crop or network.flops_size)
    where = "INPUT.FIX_SIZE_FOR_FLOPS" if network.flops_size is not None else "the training crop"
    expected = all_open_flops(model, size)["expected"]
    ratio = expected / budget.FLOPS_ALL
    if 1 / FLOPS_ALL_TOLERANCE <= ratio <= FLOPS_ALL_TOLERANCE:
        return None
    loss, matching = (ratio - budget.LOSS_MU) ** 2, (1.0 - budget.LOSS_MU) ** 2
    return (
        f"MODEL.BUDGET.FLOPS_ALL={budget.FLOPS_ALL:g} MFLOPs, but with every path open this "
        f"network's cells compute {expected:.1f} MFLOPs at {where} {size[0]}x{size[1]} "
        f"(H x W), {ratio:.2f}x as much: at LOSS_MU={budget.LOSS_MU:g} the budget loss "
        f"term (E[FLOPs]/FLOPS_ALL - LOSS_MU)^2 is {loss:.3g} with all paths open instead "
        f"of {matching:.3g} with a matching FLOPS_ALL. Fix: "
        f"MODEL.BUDGET.FLOPS_ALL {expected:.1f} (python tools/analyze_model.py --size "
        f"{size[0]}x{size[1]} prints it), or set INPUT.FIX_SIZE_FOR_FLOPS to the size "
        f"FLOPS_ALL was measured at."
    )


def run_startup_checks(cfg: CfgNode, model) -> List[str]:
    """Run every check on the main process, log each warning and return them."""
    if not comm.is_main_process():
        return []
    warnings = [check_flops_all(cfg, model)]
    try:
        sizes = _image_sizes(cfg.DATASETS.TRAIN)
    except (OSError, KeyError) as e:  # the data loader reports unreadable data itself
        logger.debug("image sizes not checked: %s", e)
        sizes = []
    warnings.append(check_crop_size(cfg, sizes))
    found = [w for w in warnings if w]
    for message in found:
        logger.warning(message)
    return found
