"""Multi-scale + flip test-time augmentation for semantic segmentation."""
from __future__ import annotations

from typing import Callable, Dict, List

from detectron2.config import configurable
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from torch import nn

__all__ = ["SemanticSegmentorWithTTA"]


def _is_flipped(view: Dict) -> bool:
    return any(isinstance(t, HFlipTransform) for t in view["transforms"].transforms)


class SemanticSegmentorWithTTA(nn.Module):
    """Run a segmentor on every view of ``DatasetMapperTTA`` (``TEST.AUG.MIN_SIZES`` x
    optional flip) and average the softmaxed class scores.

    Takes the model's inputs and returns per image ``{"sem_seg": (C, H, W) averaged
    probabilities at the input's "height"/"width", "flops": {"real", "expected"} GFLOPs
    summed over the views}`` (``"flops"`` only when the model reports it). Views run one at
    a time, so memory stays that of the largest view.
    """

    @configurable
    def __init__(self, *, model: nn.Module, tta_mapper: Callable[[Dict], List[Dict]]):
        super().__init__()
        self.model = model
        self.tta_mapper = tta_mapper

    @classmethod
    def from_config(cls, cfg, model: nn.Module):
        return {"model": model, "tta_mapper": DatasetMapperTTA(cfg)}

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [self._inference_one(x) for x in batched_inputs]

    def _inference_one(self, inputs: Dict) -> Dict:
        probs = None
        real = expected = 0.0
        has_flops = False
        views = self.tta_mapper(inputs)
        for view in views:
            output = self.model([view])[0]
            p = output["sem_seg"].softmax(dim=0)
            if _is_flipped(view):
                p = p.flip(dims=[2])
            probs = p if probs is None else probs + p
            if "flops" in output:
                has_flops = True
                real += output["flops"]["real"]
                expected += output["flops"]["expected"]
        result: Dict = {"sem_seg": probs / len(views)}
        if has_flops:
            result["flops"] = {"real": real, "expected": expected}
        return result
