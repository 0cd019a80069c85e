"""The routed backbone on the fast inference path, built from a (trained) DynamicNetwork."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from dyn_seg.modeling.backbone import DynamicNetwork, RoutingRecord
from dyn_seg.modeling.flops import routing_flops

from .cell import FastCell, FastCellOutputs
from .compile import compile_forward
from .folding import FoldedConv, fold_sequence
from .options import FastOptions
from .plan import plan_cell
from .signals import aggregate

__all__ = ["FastDynamicNetwork"]


class FastDynamicNetwork(nn.Module):
    """Eval-only copy of a :class:`DynamicNetwork` that computes only what the gates open.

    Same inputs and outputs as ``DynamicNetwork.forward_with_routing``: normalised, padded
    images (N, 3, H, W) in; the features ``layer_0`` ... and the :class:`RoutingRecord`
    (same gate activations, dropped cells and FLOPs) out. Per layer, every gate runs first
    and the activations reach the host in one transfer; each cell then computes only the
    operations and transitions that some image needs (see :mod:`dyn_seg.fast.plan`).

    The weights are copied (norms folded) at construction: rebuild after the source's
    weights change (:class:`dyn_seg.fast.FastInference` does this automatically).
    """

    def __init__(self, network: DynamicNetwork, options: Optional[FastOptions] = None):
        super().__init__()
        options = options or FastOptions()
        self.options = options
        self.memory_format = (torch.channels_last if options.channels_last
                              else torch.contiguous_format)
        self.dtype = torch.bfloat16 if options.bf16 else torch.float32
        stem = [getattr(network.stem, f"stem_{k + 1}") for k in range(len(network.stem_specs))]
        convs = [m for block in stem for m in (block if isinstance(block, nn.Sequential)
                                               else [block])]
        self.stem = fold_sequence(convs, options.fold_bn)
        self.cell_specs = network.cell_specs
        self.init_cell = FastCell(network.init_cell, options.fold_bn, self.memory_format)
        self.cells = nn.ModuleList(
            nn.ModuleList(FastCell(c, options.fold_bn, self.memory_format) for c in layer)
            for layer in network.cells
        )
        self.feature_names = list(network.output_shape())
        # FLOPs come from the source's static tables (bound methods, not submodules)
        self._flops_table = network.flops_table
        self._counting_size = network.counting_size
        for module in self.modules():  # the gates' last layer stays float32
            if isinstance(module, FoldedConv):
                module.to(self.dtype)
        self.eval()
        compile_forward(self.stem, options.compile, options.compile_mode)
        for cell in self.all_cells():
            cell.compile_parts(options)

    def all_cells(self) -> List[FastCell]:
        return [self.init_cell] + [c for layer in self.cells for c in layer]

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "FastDynamicNetwork is for inference only (norms are folded); train the "
                "DynamicNetwork it was built from and rebuild."
            )
        return super().train(False)

    def forward(self, x: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        return self.forward_with_routing(x)[0]

    @torch.no_grad()
    def forward_with_routing(
        self, x: torch.Tensor
    ) -> Tuple[Dict[str, Optional[torch.Tensor]], RoutingRecord]:
        """Features and routing record of normalised, padded images ``x`` (N, 3, H, W)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"FastDynamicNetwork expects a (N, 3, H, W) tensor of images, got shape "
                f"{tuple(x.shape)}; convert grayscale or RGBA images to 3 channels first."
            )
        stem_out = self.stem(x.to(self.dtype).contiguous(memory_format=self.memory_format))
        outputs = self._run_layer([self.init_cell], [stem_out])
        routing = {k: o.routing for k, o in outputs.items()}
        for layer_specs, layer_cells in zip(self.cell_specs, self.cells):
            inputs = [
                aggregate([outputs[(i.layer, i.scale)].get(i.path) for i in spec.inputs])
                for spec in layer_specs
            ]
            outputs = self._run_layer(layer_cells, inputs)
            routing.update({k: o.routing for k, o in outputs.items()})

        last = len(self.cell_specs) - 1
        features = {}
        for i, name in enumerate(self.feature_names):
            keep = outputs[(last, i)].keep
            features[name] = None if keep is None else keep.materialize()
        table, stem = self._flops_table(self._counting_size(x))
        expected, real = routing_flops(self.cell_specs, table, routing, x.shape[0], x)
        return features, RoutingRecord(routing, expected, real, stem)

    def _run_layer(self, cells, inputs) -> Dict[Tuple[int, int], FastCellOutputs]:
        alphas = [
            c.gate(x) if (x is not None and c.gate is not None) else None
            for c, x in zip(cells, inputs)
        ]
        host = self._to_host(alphas)
        out = {}
        for cell, x, alpha, host_alpha in zip(cells, inputs, alphas, host):
            plan = None
            if x is not None:
                plan = plan_cell(host_alpha, cell.paths, x.shape[0],
                                 self.options.skip_closed_paths, self.options.per_image_routing)
            out[(cell.spec.layer, cell.spec.scale)] = cell(x, alpha, host_alpha, plan)
        return out

    @staticmethod
    def _to_host(alphas: List[Optional[torch.Tensor]]) -> List[Optional[List[List[float]]]]:
        """All activations of a layer as Python floats, in one device-to-host transfer."""
        present = [a for a in alphas if a is not None]
        if not present:
            return [None] * len(alphas)
        flat = torch.cat([a.flatten() for a in present]).tolist()
        host, start = [], 0
        for a in alphas:
            if a is None:
                host.append(None)
                continue
            n, p = a.shape
            host.append([flat[start + i * p: start + (i + 1) * p] for i in range(n)])
            start += n * p
        return host
