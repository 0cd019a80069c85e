"""Execution plans: how a :class:`DynamicNetwork` runs its cells, never what they compute.

Both plans call the network's own modules and the cell's rules (:mod:`.cell`):

* :class:`FaithfulPlan` computes every path for every image and multiplies by the gate
  activations (the reference's semantics; training, and what the parity tests check).
* :class:`FastPlan` (inference) runs all gates of a layer first, brings the layer's
  activations to the host in one transfer, plans each cell from them
  (:func:`plan_cell`, pure host-side numbers) and then computes only the operations and
  transitions that some image needs, on the sub-batch of images that need them. Outputs
  stay symbolic (:class:`RoutedSignal`) until the one cell that reads them sums them.

A plan's ``run(network, x)`` returns the features and ``{(layer, scale): CellRouting}``;
the network turns the latter into its :class:`RoutingRecord`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .capture import forbid_capture
from .cell import CellOutputs, batch_drops, image_shut, transition_shape
from .flops import CellRouting
from .routing_space import KEEP, CellSpec

__all__ = ["CellPlan", "FaithfulPlan", "FastPlan", "RoutedSignal", "aggregate", "plan_cell"]

Rows = Optional[List[int]]  # batch indices; None = every image of the batch
Key = Tuple[int, int]
Features = Dict[str, Optional[torch.Tensor]]


class FaithfulPlan:
    """Every path for every image; drop path in training; whole-batch dropping in eval."""

    def run(self, network, x: torch.Tensor) -> Tuple[Features, Dict[Key, CellRouting]]:
        drop = network.drop_prob if network.training else 0.0
        step = network.step_rate
        outputs: Dict[Key, CellOutputs] = {(-1, 0): network.init_cell(network.stem(x), drop, step)}
        for layer_specs, layer_cells in zip(network.cell_specs, network.cells):
            layer_out = {}
            for spec, cell in zip(layer_specs, layer_cells):
                inputs = [outputs[(i.layer, i.scale)].get(i.path) for i in spec.inputs]
                present = [t for t in inputs if t is not None]
                summed = None
                for t in present:
                    summed = t if summed is None else summed + t
                layer_out[(spec.layer, spec.scale)] = cell(summed, drop, step)
            outputs.update(layer_out)
        last = len(network.cell_specs) - 1
        features = {name: outputs[(last, i)].keep
                    for i, name in enumerate(network.output_shape())}
        return features, {k: CellRouting(o.alpha, o.dropped) for k, o in outputs.items()}


# -- the fast inference plan ------------------------------------------------------------


@dataclass(frozen=True)
class CellPlan:
    """What one cell computes for a batch.

    ``dropped``: skip the cell (keep = X, up / down nothing). ``ops_rows``: images whose
    operations run. ``path_rows[path]``: images whose transition ``path`` is computed
    (``[]``: nobody, a zero output). ``shut_rows``: images whose keep output starts from X.
    """

    dropped: bool
    ops_rows: Rows
    path_rows: Dict[str, Rows]
    shut_rows: List[int]


def _as_rows(rows: List[int], batch: int) -> Rows:
    return None if len(rows) == batch else rows


def plan_cell(
    alpha: Optional[Sequence[Sequence[float]]],
    paths: Sequence[str],
    batch: int,
    skip_closed_paths: bool = True,
    per_image_routing: bool = True,
) -> CellPlan:
    """Plan a cell from its activations ``alpha[i][p]`` (None: no gate, everything open).

    The cell's rules decide dropping (:func:`batch_drops`) and shut images
    (:func:`image_shut`); every other value is ``alpha * transition``, so an image needs the
    operations only if one of its activations is above 0, and a transition only if its own
    activation is. ``skip_closed_paths`` False computes every path for every image (as the
    faithful plan); ``per_image_routing`` False skips a path only when every image closed it.
    """
    if alpha is None:
        return CellPlan(False, None, {p: None for p in paths}, [])
    sums = [sum(a) for a in alpha]
    if batch_drops(sum(sums)):
        return CellPlan(True, [], {p: [] for p in paths}, list(range(batch)))
    shut = [i for i, s in enumerate(sums) if image_shut(s)]
    if not skip_closed_paths:
        return CellPlan(False, None, {p: None for p in paths}, shut)
    everyone = list(range(batch))
    ops = [i for i in everyone if any(v > 0.0 for v in alpha[i])]
    if not per_image_routing:
        ops = everyone  # the batch is not split: whoever needs the operations runs them all
    path_rows: Dict[str, Rows] = {}
    for k, p in enumerate(paths):
        open_rows = [i for i in everyone if alpha[i][k] > 0.0]
        if open_rows and not per_image_routing:
            open_rows = everyone
        path_rows[p] = _as_rows(open_rows, batch)
    return CellPlan(False, _as_rows(ops, batch), path_rows, shut)


Scale = Union[None, float, torch.Tensor]


def _zeros(shape, like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    # allocated in its layout (zeros() then contiguous() would copy a channels_last one)
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=memory_format).zero_()


def _take(x: torch.Tensor, index: torch.Tensor, memory_format: torch.memory_format
          ) -> torch.Tensor:
    """The sub-batch ``x[index]`` in ``memory_format``. (``index_select`` returns a
    contiguous tensor from a channels_last one: the convolutions after it would then run
    in the other layout.)"""
    sub = x[index]
    if not sub.is_contiguous(memory_format=memory_format):
        sub = sub.contiguous(memory_format=memory_format)
    return sub


@dataclass
class RoutedSignal:
    """One cell output (keep, up or down) for a batch of N images, not yet materialised.

    The value for image ``rows[r]`` is ``scale[r] * values[r]``; images not in ``rows`` get
    zero. ``rows`` None means all N images in order; ``scale`` None means 1, a float is one
    scale for the whole batch, a tensor has shape (R, 1, 1, 1). ``values`` None is the zero
    signal, which is not "nothing": a cell whose inputs are all zero still runs (on zeros),
    as in the faithful plan. Every output is read by exactly one cell, so the sum may reuse
    ``values`` in place.
    """

    values: Optional[torch.Tensor]
    rows: Optional[torch.Tensor]
    scale: Scale
    shape: Tuple[int, ...]
    like: torch.Tensor
    memory_format: torch.memory_format

    def add_to(self, out: Optional[torch.Tensor]) -> torch.Tensor:
        """``out + value`` (``out`` None: the value itself), reusing tensors in place."""
        if self.values is None:
            return out if out is not None else self.materialize()
        if out is None:
            if self.rows is None:
                return self.values if self.scale is None else self.values.mul_(self.scale)
            out = _zeros(self.shape, self.like, self.memory_format)
        if self.rows is not None:
            scaled = self.values if self.scale is None else self.values * self.scale
            return out.index_add_(0, self.rows, scaled)
        if self.scale is None:
            return out.add_(self.values)
        if isinstance(self.scale, float):
            return out.add_(self.values, alpha=self.scale)
        return out.addcmul_(self.values, self.scale)

    def materialize(self) -> torch.Tensor:
        """The full (N, C, H, W) value as a tensor."""
        if self.values is None:
            return _zeros(self.shape, self.like, self.memory_format)
        return self.add_to(None)


def aggregate(signals: Sequence[Optional[RoutedSignal]]) -> Optional[torch.Tensor]:
    """Sum of a cell's inputs in order; None when every input is nothing (the cell drops)."""
    present = [s for s in signals if s is not None]
    if not present:
        return None
    out = None
    for s in present:
        if s.values is not None:
            out = s.add_to(out)
    return out if out is not None else present[0].materialize()


@dataclass
class _FastOutputs:
    signals: Dict[str, Optional[RoutedSignal]]
    routing: CellRouting


def _index(rows: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Batch indices ``rows`` as a tensor on ``like``'s device."""
    if like.device.type == "cuda":
        # from pinned memory, asynchronously: a plain host-to-device copy would make the
        # host wait for the device once per sub-batch (the plan allows one wait per layer)
        host = torch.tensor(list(rows), dtype=torch.long, pin_memory=True)
        return host.to(like.device, non_blocking=True)
    return torch.tensor(list(rows), dtype=torch.long, device=like.device)


def _local(rows: Sequence[int], within: Rows, like: torch.Tensor) -> torch.Tensor:
    """Positions of batch indices ``rows`` inside the sub-batch ``within`` (None: all)."""
    if within is None:
        return _index(rows, like)
    where = {r: k for k, r in enumerate(within)}
    return _index([where[r] for r in rows], like)


@dataclass(frozen=True)
class FastPlan:
    """Inference plan that computes only what the gates open (eval mode, no autograd).

    ``skip_closed_paths``: compute neither operations nor transitions that every image
    closed. ``per_image_routing``: compute a cell's operations and each transition only on
    the images that need them (sub-batches). ``memory_format``: of zero outputs (match the
    network's, e.g. ``torch.channels_last``).
    """

    skip_closed_paths: bool = True
    per_image_routing: bool = True
    memory_format: torch.memory_format = torch.contiguous_format

    def __post_init__(self):
        if self.per_image_routing and not self.skip_closed_paths:
            raise ValueError(
                "MODEL.FAST.PER_IMAGE_ROUTING=True needs MODEL.FAST.SKIP_CLOSED_PATHS=True "
                "(per-image routing skips closed paths image by image); set both, or "
                "PER_IMAGE_ROUTING=False."
            )

    @torch.no_grad()
    def run(self, network, x: torch.Tensor) -> Tuple[Features, Dict[Key, CellRouting]]:
        forbid_capture("FastPlan (routes planned on the host from the gates' values)")
        if network.training:
            raise RuntimeError(
                "FastPlan is for inference: call model.eval() first (training runs the "
                "faithful plan)."
            )
        stem_out = network.stem(x)
        init = network.init_cell
        outputs = self._run_layer([init.spec], [init], [stem_out])
        routing = {k: o.routing for k, o in outputs.items()}
        for layer_specs, layer_cells in zip(network.cell_specs, network.cells):
            inputs = [aggregate([outputs[(i.layer, i.scale)].signals.get(i.path)
                                 for i in spec.inputs]) for spec in layer_specs]
            outputs = self._run_layer(layer_specs, layer_cells, inputs)
            routing.update({k: o.routing for k, o in outputs.items()})
        last = len(network.cell_specs) - 1
        features = {}
        for i, name in enumerate(network.output_shape()):
            keep = outputs[(last, i)].signals[KEEP]
            features[name] = None if keep is None else keep.materialize()
        return features, routing

    def _run_layer(self, specs: Sequence[CellSpec], cells, inputs) -> Dict[Key, _FastOutputs]:
        alphas = [c.gate(x) if (x is not None and c.gate is not None) else None
                  for c, x in zip(cells, inputs)]
        host = _to_host(alphas)
        out = {}
        for spec, cell, x, alpha, host_alpha in zip(specs, cells, inputs, alphas, host):
            out[(spec.layer, spec.scale)] = self._run_cell(spec, cell, x, alpha, host_alpha)
        return out

    def _run_cell(self, spec: CellSpec, cell, x, alpha, host_alpha) -> _FastOutputs:
        paths = spec.paths
        if x is None:
            return _FastOutputs({p: None for p in paths}, CellRouting(None, True))
        n = x.shape[0]
        record = alpha if alpha is not None else cell.activations(x)
        plan = plan_cell(host_alpha, paths, n, self.skip_closed_paths, self.per_image_routing)
        if plan.dropped:
            signals = {p: None for p in paths}
            signals[KEEP] = self._signal(x, None, None, x)
            return _FastOutputs(signals, CellRouting(record, True))

        ops_rows = plan.ops_rows
        fmt = self.memory_format
        x_ops = x if ops_rows is None else _take(x, _index(ops_rows, x), fmt)
        act = cell.body(x_ops)
        signals = {}
        for path in paths:
            rows = plan.path_rows[path]
            if rows == []:
                values = None
            else:
                src = act if rows == ops_rows else _take(act, _local(rows, ops_rows, x), fmt)
                values = cell.transition(path, src)
            if path == KEEP and plan.shut_rows:
                signals[path] = self._keep_with_shut(x, values, rows, alpha, host_alpha,
                                                     plan.shut_rows, paths)
            elif values is None:
                signals[path] = self._signal(None, None, None, x, transition_shape(path, x.shape))
            else:
                signals[path] = self._scaled(values, rows, alpha, host_alpha,
                                             paths.index(path), x)
        return _FastOutputs(signals, CellRouting(record, False))

    def _signal(self, values, rows, scale, x, shape=None) -> RoutedSignal:
        shape = tuple(shape if shape is not None else x.shape)
        return RoutedSignal(values, rows, scale, shape, x, self.memory_format)

    def _scaled(self, values, rows: Rows, alpha, host_alpha, k: int, x) -> RoutedSignal:
        n = x.shape[0]
        if alpha is None:
            scale = None
        elif n == 1:
            scale = float(host_alpha[0][k])
            scale = None if scale == 1.0 else scale
        else:
            a = alpha[:, k] if rows is None else alpha[_index(rows, x), k]
            scale = a.to(values.dtype).view(-1, 1, 1, 1)
        index = None if rows is None else _index(rows, x)
        return self._signal(values, index, scale, x, (n,) + tuple(values.shape[1:]))

    def _keep_with_shut(self, x, values, rows, alpha, host_alpha, shut_rows, paths
                        ) -> RoutedSignal:
        """Shut images keep X (the cell's rule); the others alpha * ReLU(H)."""
        shut = x.new_zeros(x.shape[0])
        shut[_index(shut_rows, x)] = 1.0
        out = x * shut.view(-1, 1, 1, 1)
        if values is not None:
            out = self._scaled(values, rows, alpha, host_alpha, paths.index(KEEP), x).add_to(out)
        return self._signal(out, None, None, x)


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
