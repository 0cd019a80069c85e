"""Routing statistics over many images: which paths open, how strongly, which cells drop.

The input is the model's inference output per image (``{"routing": {(layer, scale): alpha},
"flops": {"real", "expected"}}``, see :class:`dyn_seg.modeling.DynamicSemanticSegmentor`);
the routing space (:func:`dyn_seg.modeling.routing.space.build_routing_space`) says which
path each entry of ``alpha`` is. Nothing here needs a model or a GPU.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..modeling.cost.stats import GATE_EPS, image_shut, path_open
from ..modeling.routing.space import KEEP, CellSpec

__all__ = ["RoutingStats", "collect_routing_stats", "RoutingSpace"]

# ``(init_cell, layers)`` as returned by ``build_routing_space`` (or ``model.backbone``'s
# ``init_spec`` and ``cell_specs``).
RoutingSpace = Tuple[CellSpec, Sequence[Sequence[CellSpec]]]
CellKey = Tuple[int, int]


class RoutingStats:
    """Accumulates, per path of every cell, how often it opens and its mean activation.

    Definitions (per image; ``GATE_EPS`` = 1e-4, the model's threshold):

    * a path is *active* when its gate activation alpha > ``GATE_EPS``;
    * a cell is *dropped* when it has no routing entry (it received nothing) or its
      activations sum to below ``GATE_EPS`` (the model then passes its input through and
      computes nothing);
    * a dropped cell that received signal (an active path of the previous layer, or the
      input handed on by a dropped cell before it) *passes it through*: its keep output is
      its input unchanged (no operation, no transition);
    * a path's *rate* is the share of images in which it is active and its *mean alpha* the
      mean activation over all images, a dropped cell without entry counting as 0.
    """

    def __init__(self, routing_space: RoutingSpace):
        init_spec, layers = routing_space
        self.specs: List[CellSpec] = [init_spec] + [s for layer in layers for s in layer]
        self._by_key: Dict[CellKey, CellSpec] = {(s.layer, s.scale): s for s in self.specs}
        self.num_layers = len(layers)
        self.num_images = 0
        self._active: Dict[CellKey, torch.Tensor] = {}
        self._alpha_sum: Dict[CellKey, torch.Tensor] = {}
        self._dropped: Dict[CellKey, int] = {}
        self._passed: Dict[CellKey, int] = {}
        for spec in self.specs:
            key = (spec.layer, spec.scale)
            self._active[key] = torch.zeros(spec.num_paths, dtype=torch.float64)
            self._alpha_sum[key] = torch.zeros(spec.num_paths, dtype=torch.float64)
            self._dropped[key] = 0
            self._passed[key] = 0
        self.real_gflops: List[float] = []
        self.expected_gflops: List[float] = []

    def spec(self, layer: int, scale: int) -> CellSpec:
        if (layer, scale) in self._by_key:
            return self._by_key[(layer, scale)]
        raise KeyError(
            f"cell (layer={layer}, scale={scale}) is not in this routing space; cells exist "
            f"for layers -1 (init) .. {self.num_layers - 1}."
        )

    def add(self, output: Mapping) -> None:
        """Account one image's inference output (needs its ``"routing"`` entry)."""
        if "routing" not in output:
            raise KeyError(
                "an inference output has no 'routing' entry; pass the outputs of a "
                "DynamicSemanticSegmentor in eval mode (model([...]) or DefaultPredictor)."
            )
        routing = output["routing"]
        open_paths: Dict[CellKey, torch.Tensor] = {}  # this image's active paths per cell
        passes: Dict[CellKey, bool] = {}  # this image's dropped cells that hand signal on
        for spec in self.specs:  # in topological order: init cell, then layer by layer
            key = (spec.layer, spec.scale)
            alpha = routing.get(key)
            if alpha is None:
                self._dropped[key] += 1
                continue
            a = torch.as_tensor(alpha).detach().to("cpu", torch.float64).flatten()
            if a.numel() != spec.num_paths:
                raise ValueError(
                    f"routing entry of cell {key} has {a.numel()} activations but the routing "
                    f"space gives it {spec.num_paths} paths {spec.paths}; build the space with "
                    "the same LAYER_NUM / CELL_NUM_LIST / MAX_STRIDE as the model."
                )
            self._active[key] += path_open(a).double()
            self._alpha_sum[key] += a
            if not image_shut(float(a.sum())):
                open_paths[key] = path_open(a)
                continue
            self._dropped[key] += 1
            # A closed path still sends zeros; only a cell that received an active path (or
            # a handed-on input) hands real signal on.
            if spec.layer < 0 or self._receives(spec, open_paths, passes):
                passes[key] = True
                self._passed[key] += 1
        flops = output.get("flops")
        if flops is not None:
            self.real_gflops.append(float(flops["real"]))
            self.expected_gflops.append(float(flops["expected"]))
        self.num_images += 1

    def _per_image(self, total: float) -> float:
        return total / self.num_images if self.num_images else 0.0

    def path_rate(self, layer: int, scale: int, path: str) -> float:
        """Share of images in which ``path`` of cell ``(layer, scale)`` is active."""
        spec = self.spec(layer, scale)
        return self._per_image(float(self._active[(layer, scale)][self._index(spec, path)]))

    def path_mean_alpha(self, layer: int, scale: int, path: str) -> float:
        """Mean gate activation of ``path`` of cell ``(layer, scale)`` over all images."""
        spec = self.spec(layer, scale)
        return self._per_image(float(self._alpha_sum[(layer, scale)][self._index(spec, path)]))

    def dropped(self, layer: int, scale: int) -> int:
        """Number of images for which cell ``(layer, scale)`` was dropped."""
        self.spec(layer, scale)
        return self._dropped[(layer, scale)]

    def passed_through(self, layer: int, scale: int) -> int:
        """Number of images for which cell ``(layer, scale)`` passed its input through."""
        self.spec(layer, scale)
        return self._passed[(layer, scale)]

    def layer_active_rate(self, layer: int) -> float:
        """Share of the (image, path) activations of ``layer`` that are active."""
        keys = [(s.layer, s.scale) for s in self.specs if s.layer == layer]
        if not keys:
            raise KeyError(f"layer {layer} is not in this routing space (-1 .. "
                           f"{self.num_layers - 1}).")
        active = sum(float(self._active[k].sum()) for k in keys)
        paths = sum(self._active[k].numel() for k in keys)
        return self._per_image(active / paths)

    def gflops_summary(self) -> Optional[Dict[str, Dict[str, float]]]:
        """Mean / min / max of the per-image real and expected GFLOPs (None if not recorded)."""
        if not self.real_gflops:
            return None

        def summary(values: List[float]) -> Dict[str, float]:
            return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}

        return {"real": summary(self.real_gflops), "expected": summary(self.expected_gflops)}

    def to_dict(self) -> Dict:
        """A JSON-serialisable summary (see ``docs/ROUTING.md`` for the fields)."""
        cells = []
        for spec in self.specs:
            cells.append({
                "layer": spec.layer,
                "scale": spec.scale,
                "stride": spec.stride,
                "dropped": self.dropped(spec.layer, spec.scale),
                "passed_through": self.passed_through(spec.layer, spec.scale),
                "paths": {
                    p: {
                        "rate": self.path_rate(spec.layer, spec.scale, p),
                        "mean_alpha": self.path_mean_alpha(spec.layer, spec.scale, p),
                    }
                    for p in spec.paths
                },
            })
        layers = []
        for layer in range(-1, self.num_layers):
            keys = [(s.layer, s.scale) for s in self.specs if s.layer == layer]
            layers.append({
                "layer": layer,
                "active_rate": self.layer_active_rate(layer),
                "dropped": sum(self._dropped[k] for k in keys),
            })
        return {
            "num_images": self.num_images,
            "gate_eps": GATE_EPS,
            "cells": cells,
            "layers": layers,
            "dropped_total": sum(self._dropped.values()),
            "gflops": self.gflops_summary(),
        }

    def _receives(self, spec: CellSpec, open_paths: Dict[CellKey, torch.Tensor],
                  passes: Dict[CellKey, bool]) -> bool:
        for inp in spec.inputs:
            sender = (inp.layer, inp.scale)
            if inp.path == KEEP and passes.get(sender, False):
                return True
            active = open_paths.get(sender)
            if active is not None and active[self._by_key[sender].paths.index(inp.path)]:
                return True
        return False

    @staticmethod
    def _index(spec: CellSpec, path: str) -> int:
        if path not in spec.paths:
            raise KeyError(
                f"cell ({spec.layer}, {spec.scale}) has no path {path!r}; its paths are "
                f"{spec.paths}."
            )
        return spec.paths.index(path)


def collect_routing_stats(outputs: Iterable[Mapping], routing_space: RoutingSpace
                          ) -> RoutingStats:
    """Accumulate :class:`RoutingStats` over per-image inference outputs.

    Args:
        outputs: one dict per image with ``"routing"`` ({(layer, scale): (num_paths,)
            activations in the cell's path order}) and optionally ``"flops"`` ({"real",
            "expected"} GFLOPs). A generator works: each output is used once.
        routing_space: ``(init_spec, cell_specs)`` of the model
            (``model.backbone.init_spec, model.backbone.cell_specs``).
    """
    stats = RoutingStats(routing_space)
    for out in outputs:
        stats.add(out)
    return stats
