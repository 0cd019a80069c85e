"""What ``tools/export_model.py`` and ``tools/deploy/run_exported.py`` do, as functions.

:func:`export_from_config` builds the model of a config, loads its weights, prepares the
sample image (detectron2's test-time resize, then rounded up to the backbone's size
divisibility), exports it and, with ``check``, runs the exported file in its runtime on the
sample and on generated images against the eager PyTorch model.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .exporters import ExportResult, check_combination, export, sample_size
from .module import ExportableSegmentor
from .runtime import load_exported, prepare_image, summarize

__all__ = ["build_exportable", "compare", "export_from_config", "sample_input"]

logger = logging.getLogger(__name__)


def build_exportable(cfg, variant: str, weights: str = "") -> ExportableSegmentor:
    """The config's model with ``weights`` (or ``cfg.MODEL.WEIGHTS``; none: random init)
    as an :class:`ExportableSegmentor` on the CPU."""
    from detectron2.modeling import build_model

    from dyn_seg.checkpoint import DynSegCheckpointer

    model = build_model(cfg)
    weights = weights or cfg.MODEL.WEIGHTS
    if weights:
        DynSegCheckpointer(model).load(weights)
    else:
        logger.warning("No weights given (--weights / MODEL.WEIGHTS): exporting a randomly "
                       "initialised model.")
    model.eval().to("cpu")
    return ExportableSegmentor(model, variant)


def sample_input(cfg, divisor: int, image_path: Optional[str] = None,
                 size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(3, H, W) float32 BGR sample at the export size: ``size`` if given; else the image's
    size after detectron2's test-time resize (``INPUT.MIN_SIZE_TEST`` /
    ``INPUT.MAX_SIZE_TEST``), or ``MIN_SIZE_TEST x 2 * MIN_SIZE_TEST`` for a generated
    scene; rounded up to multiples of ``divisor``."""
    if size is None:
        short, longest = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        if image_path:
            import cv2
            from detectron2.data import transforms as T

            image = cv2.imread(image_path, cv2.IMREAD_COLOR)
            if image is None:
                raise FileNotFoundError(f"--sample-image {image_path!r} cannot be read.")
            resize = T.ResizeShortestEdge([short, short], longest).get_transform(image)
            size = (resize.new_h, resize.new_w)
        else:
            size = (short, min(2 * short, longest) if longest else 2 * short)
    return prepare_image(image_path, sample_size(size, divisor))


def compare(reference: Dict[str, torch.Tensor], outputs: Dict[str, np.ndarray]) -> Dict:
    """Largest relative difference of the logits and GFLOPs, and argmax agreement."""
    ref = reference["sem_seg"].numpy()
    out = outputs["sem_seg"]
    scale = max(float(np.abs(ref).max()), 1e-12)
    return {
        "max_rel_diff": float(np.abs(out - ref).max()) / scale,
        "argmax_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "gflops_diff": float(np.abs(outputs["gflops"] - reference["gflops"].numpy()).max()),
        "gates_equal_open": bool(((outputs["gates"] > 0)
                                  == (reference["gates"].numpy() > 0)).all()),
    }


def export_from_config(cfg, fmt: str, method: str, variant: str, output_dir: str,
                       weights: str = "", sample_image: Optional[str] = None,
                       size: Optional[Tuple[int, int]] = None, check: int = 0
                       ) -> Tuple[ExportResult, List[Dict]]:
    """Export the config's model; with ``check`` > 0 run the exported file on the sample
    and ``check - 1`` generated scenes and compare with eager PyTorch. Returns the export
    and one summary per checked image (:func:`~.runtime.summarize` plus :func:`compare`)."""
    check_combination(fmt, method, variant)
    module = build_exportable(cfg, variant, weights)
    sample = sample_input(cfg, module.size_divisibility, sample_image, size)
    result = export(module, torch.from_numpy(sample)[None], fmt, method, output_dir,
                    {"config_file": getattr(cfg, "_config_file", ""),
                     "weights": weights or cfg.MODEL.WEIGHTS})
    rows: List[Dict] = []
    if check > 0:
        runner = load_exported(result.path)
        images = [sample] + [prepare_image(None, sample.shape[1:], seed=k)
                             for k in range(1, check)]
        columns = result.metadata["gate_columns"]
        for k, image in enumerate(images):
            batch = image[None]
            outputs = runner(batch)
            with torch.no_grad():
                reference = module(torch.from_numpy(batch))
            row = summarize(outputs, columns)[0]
            row.update(image="sample" if k == 0 else f"generated-{k}", **compare(reference,
                                                                                 outputs))
            rows.append(row)
    return result, rows
