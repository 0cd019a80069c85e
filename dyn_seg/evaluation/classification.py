"""Top-1 / top-5 accuracy of a classifier, gathered across ranks."""
from __future__ import annotations

import itertools
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from .routing import RoutingEvaluator

__all__ = ["ClassificationEvaluator", "build_classification_evaluator"]

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy (in %) from the inputs' ``"label"`` and the outputs' ``"scores"``.

    Result: ``{"classification": {"top1": ..., "top5": ..., "num_images": n}}``; with
    ``distributed`` the counts of all ranks are summed (the result is on the main rank).
    A k larger than the number of classes counts as that number.
    """

    def __init__(self, topk: Sequence[int] = (1, 5), distributed: bool = True):
        self.topk = tuple(topk)
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._correct: List[List[int]] = []  # per image: hit (0/1) at each k

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "label" not in inp:
                raise ValueError(
                    f"{inp.get('file_name', 'an input')} has no 'label': evaluate classification "
                    "on a dataset registered with labels (e.g. dyn_seg.data.imagenet)."
                )
            scores = out["scores"]
            k = min(max(self.topk), scores.numel())
            top = torch.topk(scores.float(), k).indices.tolist()
            label = int(inp["label"])
            self._correct.append([int(label in top[: min(t, k)]) for t in self.topk])

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        correct = self._correct
        if self.distributed:
            comm.synchronize()
            correct = list(itertools.chain(*comm.gather(correct, dst=0)))
            if not comm.is_main_process():
                return None
        if not correct:
            logger.warning("ClassificationEvaluator received no images.")
            return {"classification": {}}
        hits = torch.tensor(correct, dtype=torch.float64).mean(dim=0) * 100
        result = {f"top{t}": float(h) for t, h in zip(self.topk, hits)}
        result["num_images"] = float(len(correct))
        return {"classification": result}


def build_classification_evaluator(cfg: CfgNode, dataset_name: str,
                                   output_folder: Optional[str] = None) -> DatasetEvaluators:
    """Top-1 / top-5 accuracy and FLOPs / gate statistics (key ``"routing"``)."""
    return DatasetEvaluators([ClassificationEvaluator(), RoutingEvaluator(distributed=True)])
