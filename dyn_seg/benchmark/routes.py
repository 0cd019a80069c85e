"""Input-dependent routes on demand: gates that open or shut a path per image.

An exported conditional graph must route every image by its own gates, not by the export
sample's. To check that, :func:`route_images` sets chosen gates of an (untrained) network
so that given images open or shut given paths: every other gate is input-independent and
open (:func:`dyn_seg.benchmark.patterns.apply_gate_pattern` with no closed path), and a
chosen gate's last layer becomes the affine function of its pooled features that is
``+margin`` on the images that should open the path and ``-margin`` on the others
(least squares through the images' pooled features: exact while there are at most as many
images as pooled channels + 1), so alpha = tanh(margin) or exactly 0.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from dyn_seg.benchmark.patterns import GatePattern, apply_gate_pattern

__all__ = ["Route", "route_images"]

# (layer, scale) of a routed cell -> per path, for each image, whether it opens the path
Route = Dict[Tuple[int, int], Dict[str, Sequence[bool]]]


@torch.no_grad()
def _pooled(model, images: torch.Tensor, cell) -> torch.Tensor:
    """The pooled gate features (one row per image) of ``cell`` in ``model``'s faithful
    eval forward pass, each image alone."""
    rows: List[torch.Tensor] = []

    def hook(_module, _inputs, output):
        rows.append(output.float().mean(dim=(2, 3)))

    handle = cell.gate.reduce.register_forward_hook(hook)
    try:
        for image in images:
            x = (image.to(model.pixel_mean) - model.pixel_mean) / model.pixel_std
            model.backbone.forward_with_routing(x[None])
    finally:
        handle.remove()
    if len(rows) != len(images):
        key = (cell.spec.layer, cell.spec.scale)
        raise ValueError(f"cell {key} receives nothing for some of the images (its gate did "
                         "not run): route a cell whose inputs stay open.")
    return torch.cat(rows)


@torch.no_grad()
def route_images(model, images: torch.Tensor, route: Route, margin: float = 3.0,
                 bias: float = 8.0) -> None:
    """Set ``model``'s gates (in place, eval mode) so that image ``i`` of ``images``
    ((N, 3, H, W), model input format) opens path ``p`` of cell ``key`` iff
    ``route[key][p][i]``; every other path of every cell is open for every image.
    Cells are set in layer order (a cell's pooled features depend on earlier gates)."""
    model.eval()
    network = model.backbone
    apply_gate_pattern(network, GatePattern(), bias)
    cells = {(c.spec.layer, c.spec.scale): c for c in network.all_cells()}
    for key in sorted(route):
        if key not in cells or key[0] < 0:
            raise ValueError(f"route names cell {key}, which is not a routed cell of this "
                             f"network: {sorted(k for k in cells if k[0] >= 0)}")
        cell = cells[key]
        pooled = _pooled(model, images, cell).double()
        design = torch.cat([pooled, torch.ones(len(images), 1, dtype=pooled.dtype)], dim=1)
        for path, opens in route[key].items():
            if len(opens) != len(images):
                raise ValueError(f"route[{key}][{path!r}] has {len(opens)} entries for "
                                 f"{len(images)} images.")
            target = torch.tensor([[margin if o else -margin] for o in opens],
                                  dtype=design.dtype)
            solution = torch.linalg.lstsq(design, target, driver="gelsd").solution[:, 0]
            k = cell.spec.paths.index(path)
            proj = cell.gate.proj
            proj.weight[k].copy_(solution[:-1].view_as(proj.weight[k]).to(proj.weight.dtype))
            proj.bias[k] = float(solution[-1])
