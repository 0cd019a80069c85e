"""``DynSegPredictor``: detectron2's ``DefaultPredictor`` with safe and complete weight loading.

``DefaultPredictor`` loads ``cfg.MODEL.WEIGHTS`` with detectron2's plain checkpointer, which
unpickles ``.pkl`` files (running any code inside), does not know the reference
implementation's parameter names and only warns when most parameters stay at their random
initialisation. ``DynSegPredictor`` is the same predictor (same ``__call__``: one BGR/RGB
image in, the model's output dict out) whose weights go through
:class:`~dyn_seg.checkpoint.DynSegCheckpointer` in inference mode:

* code-carrying pickles are refused unless ``allow_unsafe_pickle=True``;
* reference-named checkpoints are converted;
* no weights, or weights that leave parameters missing or wrongly shaped, are an error
  naming how many and which parts, unless ``allow_partial_weights=True``.
"""
from __future__ import annotations

import detectron2.data.transforms as T
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.data.reader import check_image_array

__all__ = ["DynSegPredictor"]


class DynSegPredictor(DefaultPredictor):
    """``DefaultPredictor(cfg)`` whose weights are loaded safely and completely."""

    def __init__(self, cfg: CfgNode, *, allow_unsafe_pickle: bool = False,
                 allow_partial_weights: bool = False):
        # DefaultPredictor.__init__ builds and loads in one go with DetectionCheckpointer;
        # this repeats its few set-up steps with our checkpointer instead (no weights are
        # ever loaded through the unsafe path).
        self.cfg = cfg.clone()  # cfg can be modified by model
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        DynSegCheckpointer(
            self.model,
            allow_unsafe_pickle=allow_unsafe_pickle,
            inference=True,
            allow_partial_weights=allow_partial_weights,
        ).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

    def __call__(self, original_image):
        """``original_image``: an (H, W, 3) uint8 array in ``INPUT.FORMAT`` order; a 16-bit
        or float array is refused with the conversion to use (it would saturate)."""
        return super().__call__(check_image_array(original_image))
