"""Multi-scale + flip test-time augmentation for semantic segmentation, as the reference:
the views' logits are averaged (not their softmax probabilities)."""
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
    """Run a segmentor on every view of ``DatasetMapperTTA`` (``TEST.AUG.MIN_SIZES`` short
    edges x optional flip; the shipped configs use the training short edges) and average
    the views' **logits**, as the reference does.

    Takes the model's inputs and returns per image ``{"sem_seg": (C, H, W) averaged logits
    at the input's "height"/"width", "flops": each of the model's GFLOPs figures summed
    over the views}`` (``"flops"`` only when the model reports it): the FLOPs of a TTA
    evaluation are the cost of all views, not of the first one. Views run one at a time, so
    memory stays that of the largest view.
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
        logits = None
        flops: Dict[str, float] = {}
        views = self.tta_mapper(inputs)
        for view in views:
            output = self.model([view])[0]
            view_logits = output["sem_seg"]
            if _is_flipped(view):
                view_logits = view_logits.flip(dims=[2])
            logits = view_logits if logits is None else logits + view_logits
            for key, value in output.get("flops", {}).items():
                flops[key] = flops.get(key, 0.0) + value
        result: Dict = {"sem_seg": logits / len(views)}
        if flops:
            result["flops"] = flops
        return result
