"""Overlays of panoptic and instance predictions with detectron2's ``Visualizer``."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from detectron2.data import Metadata, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draws_task_overlay", "render_task_prediction", "task_metadata"]

#: Task overlays (``dyn_seg.tasks.Task.overlay``) drawn by :func:`render_task_prediction`.
TASK_OVERLAYS = ("panoptic_seg", "instances")


def draws_task_overlay(cfg) -> bool:
    """Whether the config's task draws panoptic or instance predictions (its
    :class:`dyn_seg.tasks.Task` says so) rather than a class map."""
    from dyn_seg.tasks import task_for

    return task_for(cfg).overlay in TASK_OVERLAYS


def task_metadata(cfg) -> Metadata:
    """Class names and colours of the config's test dataset (or training dataset)."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TEST is empty: the overlay needs the class names of the "
                         "dataset the model was trained on, e.g. cityscapes_fine_panoptic_val.")
    return MetadataCatalog.get(names[0])


def render_task_prediction(image_bgr: np.ndarray, prediction: Dict, metadata: Metadata, *,
                           alpha: float = 0.6, text: Optional[str] = None) -> np.ndarray:
    """RGB overlay (H, W, 3) of a panoptic segmentation (``"panoptic_seg"``) or of the
    instances (``"instances"``) of ``prediction`` on ``image_bgr``."""
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in prediction:  # a panoptic model also outputs its instances
        panoptic, segments = prediction["panoptic_seg"]
        vis.draw_panoptic_seg(panoptic.cpu(), segments, alpha=alpha)
    else:
        vis.draw_instance_predictions(prediction["instances"].to("cpu"))
    if text:
        vis.draw_text(text, (4, 4), color="w", horizontal_alignment="left")
    return vis.output.get_image()
