"""Overlays of panoptic and instance predictions with detectron2's ``Visualizer``."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from detectron2.data import Metadata, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["has_task_output", "render_task_prediction", "task_metadata"]


def has_task_output(prediction: Dict) -> bool:
    """Whether a model output is panoptic (``"panoptic_seg"``) or instance (``"instances"``
    without ``"sem_seg"``) rather than semantic only."""
    return "panoptic_seg" in prediction or (
        "instances" in prediction and "sem_seg" not in prediction
    )


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
    if "panoptic_seg" in prediction:
        panoptic, segments = prediction["panoptic_seg"]
        vis.draw_panoptic_seg(panoptic.cpu(), segments, alpha=alpha)
    else:
        vis.draw_instance_predictions(prediction["instances"].to("cpu"))
    if text:
        vis.draw_text(text, (4, 4), color="w", horizontal_alignment="left")
    return vis.output.get_image()
