"""Compute and routing statistics of a dynamic network over an evaluation set."""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from dyn_seg.modeling.cost.stats import open_path_counts, open_rates

__all__ = ["RoutingEvaluator"]


#: The per-image GFLOPs figures a model's ``"flops"`` output may carry, in report order.
FLOPS_KEYS = ("real", "expected", "backbone")


class RoutingEvaluator(DatasetEvaluator):
    """Per-image GFLOPs and gate openness, summarised over the whole set.

    Reads the model's inference outputs ``"flops"`` (``{"real", "expected"}`` GFLOPs of
    the image, and ``"backbone"``, the routed network's share of real, where the
    meta-architecture runs heads besides it) and ``"routing"`` (``{(layer, scale):
    (num_paths,) gate activations}``).
    ``evaluate()`` returns ``{"routing": {...}}`` with the mean, min and max real and
    expected GFLOPs (``GFLOPs_real``, ``GFLOPs_real_min``, ..., ``GFLOPs_backbone`` where
    given) and ``gates_open_pct``: the
    percentage of gate paths of routed cells (the init cell excluded, like the training
    statistic) with an activation above ``GATE_EPS``, over the gates that ran, and
    ``layer_{L}_open_pct``: the same percentage for the cells of layer L alone (TensorBoard
    shows it as ``routing/layer_{L}_open_pct``). Keys whose inputs never appeared are left
    out.
    """

    def __init__(self, distributed: bool = True):
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        # "real", "expected" (and "backbone" where given) -> per-image GFLOPs
        self._flops: Dict[str, List[float]] = {k: [] for k in FLOPS_KEYS}
        # per image: (open paths, paths) over the routed cells' gates
        self._gates: List[List[int]] = []
        # over all images: layer -> [open paths, paths]
        self._layers: Dict[int, List[int]] = {}

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for output in outputs:
            flops = output.get("flops")
            if flops is not None:
                for key, values in self._flops.items():
                    if key in flops:
                        values.append(float(flops[key]))
            counts = open_path_counts(output.get("routing") or {})
            if counts:
                self._gates.append([sum(o for o, _ in counts.values()),
                                    sum(t for _, t in counts.values())])
            for layer, (opened, total) in counts.items():
                acc = self._layers.setdefault(layer, [0, 0])
                acc[0] += opened
                acc[1] += total

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        flops, gates = self._flops, self._gates
        layers = {k: list(v) for k, v in self._layers.items()}
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather([flops, gates, layers], dst=0)
            if not comm.is_main_process():
                return None
            flops = {k: list(itertools.chain(*(g[0][k] for g in gathered))) for k in FLOPS_KEYS}
            gates = list(itertools.chain(*(g[1] for g in gathered)))
            layers = {}
            for g in gathered:
                for layer, (opened, total) in g[2].items():
                    counts = layers.setdefault(layer, [0, 0])
                    counts[0] += opened
                    counts[1] += total

        res: Dict[str, float] = OrderedDict()
        for name, values in flops.items():
            if values:
                arr = np.asarray(values, dtype=np.float64)
                res[f"GFLOPs_{name}"] = float(arr.mean())
                res[f"GFLOPs_{name}_min"] = float(arr.min())
                res[f"GFLOPs_{name}_max"] = float(arr.max())
        if gates:
            counts = np.asarray(gates, dtype=np.float64).sum(axis=0)
            res["gates_open_pct"] = float(100.0 * counts[0] / counts[1])
        for layer, rate in open_rates({k: tuple(v) for k, v in layers.items()})[1].items():
            res[f"layer_{layer}_open_pct"] = 100.0 * rate
        return OrderedDict({"routing": res}) if res else OrderedDict()
