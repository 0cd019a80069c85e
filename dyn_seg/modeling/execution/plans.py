"""Execution plans: how a :class:`DynamicNetwork` runs its cells, never what they compute.

Every plan calls the network's own modules and the cell's rules (:mod:`.cell`):

* :class:`FaithfulPlan` computes every path for every image and multiplies by the gate
  activations (the reference's semantics; training, and what the parity tests check).
  Every routing decision (a cell dropped for the batch, an image shut, a cell that received
  nothing) is a device tensor: no host read inside the forward pass, so it is traceable
  end to end (``torch.compile(fullgraph=True)``, ``torch.export``). An output that is
  *nothing* is exactly zero, with a presence flag beside it.
* :class:`GraphPlan` (inference) is the same program for an inference copy, in two
  variants: *dense* (every path computed and weighted, as the faithful plan) and
  *conditional* (each cell's operations and each transition run under a device predicate,
  so that closed paths are not computed: ``torch.cond`` when compiled or exported; run
  eagerly, the predicates of a layer are read in one transfer, the documented fallback).
* :class:`FastPlan` (eager inference) runs all gates of a layer first, brings the layer's
  activations to the host in one transfer, plans each cell from them
  (:func:`plan_cell`, pure host-side numbers) and then computes only the operations and
  transitions that some image needs, on the sub-batch of images that need them. Outputs
  stay symbolic (:class:`RoutedSignal`) until the one cell that reads them sums them.

A plan's ``run(network, x)`` returns the features (tensors: a feature whose cell received
nothing is zeros), ``{(layer, scale): CellRouting}`` and the features' presence flags;
the network turns the last two into its :class:`RoutingRecord`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.checkpoint import checkpoint

from ..cost.flops import CellRouting
from ..routing.cell import (
    CellOutputs,
    Presence,
    any_present,
    batch_drops,
    both,
    image_shut,
    negate,
    transition_shape,
)
from ..routing.space import DOWN, KEEP, UP, CellSpec
from .export_guards import forbid_capture

__all__ = ["CellPlan", "FaithfulPlan", "FastPlan", "GraphPlan", "RoutedSignal", "aggregate",
           "plan_cell"]

Rows = Optional[List[int]]  # batch indices; None = every image of the batch
Key = Tuple[int, int]
Features = Dict[str, torch.Tensor]
PlanResult = Tuple[Features, Dict[Key, CellRouting], Dict[str, Presence]]


def sum_inputs(spec: CellSpec, outputs: Dict[Key, CellOutputs]
               ) -> Tuple[Optional[torch.Tensor], Presence]:
    """The summed inputs X of the cell ``spec`` and whether any of them is something.

    An input that is nothing is exactly zero (or None when known on the host): adding it
    changes no bit of the sum, so the sum runs over every input in order.
    """
    summed, flags = None, []
    for i in spec.inputs:
        src = outputs[(i.layer, i.scale)]
        flag = src.presence(i.path)
        if flag is False:
            continue
        t = src.get(i.path)
        flags.append(flag)
        summed = t if summed is None else summed + t
    return summed, any_present(flags)


def _stem_scale_shape(stem_shape: Sequence[int], spec: CellSpec) -> Tuple[int, int, int, int]:
    """Shape of a cell's tensors at ``spec.scale`` for a stem output of ``stem_shape``."""
    n, _, h, w = stem_shape
    for _ in range(spec.scale):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return (n, spec.channels, h, w)


def _run_network(network, x: torch.Tensor, run_layer) -> PlanResult:
    """The loop every device-routed plan shares: stem, init cell, then layer by layer the
    summed inputs of each cell and ``run_layer(cells, inputs)`` -> their outputs."""
    stem_out = network.stem(x)
    outputs: Dict[Key, CellOutputs] = {}
    init = network.init_cell
    outputs[(-1, 0)] = run_layer([init], [(stem_out, True)])[0]
    for layer_specs, layer_cells in zip(network.cell_specs, network.cells):
        inputs = [sum_inputs(spec, outputs) for spec in layer_specs]
        for spec, out in zip(layer_specs, run_layer(layer_cells, inputs)):
            outputs[(spec.layer, spec.scale)] = out
    last = len(network.cell_specs) - 1
    features, present = {}, {}
    for i, name in enumerate(network.output_shape()):
        out = outputs[(last, i)]
        keep = out.keep
        if keep is None:  # known on the host to be nothing
            spec = network.cell_specs[last][i]
            keep = stem_out.new_zeros(_stem_scale_shape(stem_out.shape, spec))
        features[name] = keep
        present[name] = out.presence(KEEP)
    routing = {k: CellRouting(o.alpha, o.dropped, o.present) for k, o in outputs.items()}
    return features, routing, present


class FaithfulPlan:
    """Every path for every image; drop path in training; whole-batch dropping in eval as a
    device decision. With ``network.checkpoint_cells`` in training each cell's activations
    are recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant; the
    random drop-path masks are replayed, so gradients are the same)."""

    def run(self, network, x: torch.Tensor) -> PlanResult:
        drop = network.drop_prob if network.training else 0.0
        step = network.step_rate
        recompute = (getattr(network, "checkpoint_cells", False) and network.training
                     and torch.is_grad_enabled())

        def run_layer(cells, inputs):
            outs = []
            for cell, (summed, present) in zip(cells, inputs):
                if recompute and summed is not None:
                    outs.append(checkpoint(cell, summed, drop, step, present,
                                           use_reentrant=False))
                else:
                    outs.append(cell(summed, drop, step, present))
            return outs

        return _run_network(network, x, run_layer)


def _exporting() -> bool:
    """True while torch.compile / torch.export trace the forward pass."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    for name in ("is_compiling", "is_exporting", "is_dynamo_compiling"):
        fn = getattr(compiler, name, None)
        if fn is not None and fn():
            return True
    return False


def _guarded(pred: Presence, true_fn: Callable, false_fn: Callable, operands: tuple):
    """``true_fn(*operands)`` if ``pred`` else ``false_fn(*operands)``: a Python branch
    for a host-side bool, ``torch.cond`` (a conditional in the graph) for a device flag."""
    if isinstance(pred, bool):
        return (true_fn if pred else false_fn)(*operands)
    return torch.cond(pred, true_fn, false_fn, operands)


def _zeros(shape, like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    # allocated in its layout (zeros() then contiguous() would copy a channels_last one)
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=memory_format).zero_()


@dataclass(frozen=True)
class GraphPlan:
    """Inference plan without host decisions, for one captured program per input size.

    ``conditional`` False (*dense*): every path computed and weighted, exactly the faithful
    plan's semantics. True (*conditional*): a cell's operations run only when it is not
    dropped, and a transition only when some image opened it; otherwise their outputs are
    zeros (what ``alpha * transition`` is for closed paths). Predicates are per batch (any
    image that needs a path computes it for the batch, as the dense variant would). Traced
    (torch.compile, torch.export) each guarded region is a ``torch.cond``; run eagerly, the
    predicates of a layer come to the host in one transfer (on a CPU the host is the device).
    ``memory_format``: of zero outputs (the network's layout).
    """

    conditional: bool = False
    memory_format: torch.memory_format = torch.contiguous_format

    def run(self, network, x: torch.Tensor) -> PlanResult:
        if network.training:
            raise RuntimeError(
                "GraphPlan is for inference: call model.eval() first (training runs the "
                "faithful plan)."
            )
        with torch.no_grad():
            return self._run(network, x)

    def _run(self, network, x: torch.Tensor) -> PlanResult:
        if not self.conditional:
            return _run_network(network, x, lambda cells, inputs: [
                cell(summed, 0.0, 0.0, present) for cell, (summed, present) in zip(cells, inputs)
            ])
        if torch.jit.is_tracing():
            raise RuntimeError(
                "The conditional graph plan cannot be traced with torch.jit.trace (a trace "
                "freezes its branches): export it with torch.export (tools/export_model.py "
                "--export-method torch-export), or trace the dense variant "
                "(MODEL.FAST.PLAN graph-dense)."
            )
        return _run_network(network, x, self._conditional_layer)

    def _conditional_layer(self, cells, inputs) -> List[CellOutputs]:
        # gates and predicates of the whole layer first
        states, preds = [], []
        for cell, (x, present) in zip(cells, inputs):
            if x is None or present is False:
                states.append(None)
                continue
            alpha = cell.activations(x)
            dropped = cell.drops(alpha, present)
            run_ops = negate(dropped)
            paths = {p: both(run_ops, (alpha[:, cell.spec.paths.index(p)] > 0).any())
                     for p in (UP, DOWN) if p in cell.spec.paths}
            states.append((alpha, dropped, run_ops, paths))
            preds += [run_ops] + list(paths.values())
        host = _read_predicates(preds) if not _exporting() else None
        outs = []
        for cell, (x, present), state in zip(cells, inputs, states):
            if state is None:
                outs.append(CellOutputs(None, None, None, None, True, False))
                continue
            alpha, dropped, run_ops, paths = state
            if host is not None:
                run_ops = host.pop(0)
                paths = {p: host.pop(0) for p in paths}
            act = _guarded(run_ops, cell.body, torch.zeros_like, (x,))
            keep = cell.keep_output(x, alpha, act, dropped)
            trans = {}
            for p, pred in paths.items():
                shape = transition_shape(p, x.shape)
                fmt = self.memory_format

                def compute(a, al, p=p, cell=cell):
                    return cell.path_output(p, al, a, False)

                def skip(a, al, shape=shape, fmt=fmt):
                    return _zeros(shape, a, fmt)

                trans[p] = _guarded(pred, compute, skip, (act, alpha))
            outs.append(CellOutputs(keep, trans.get(UP), trans.get(DOWN), alpha, dropped,
                                    present))
        return outs


def _read_predicates(preds: List[Presence]) -> List[bool]:
    """The layer's predicates as Python bools, with one device-to-host transfer."""
    tensors = [p for p in preds if not isinstance(p, bool)]
    values = iter(torch.stack(tensors).tolist()) if tensors else iter(())
    return [p if isinstance(p, bool) else bool(next(values)) for p in preds]


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
    def run(self, network, x: torch.Tensor) -> PlanResult:
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
        features, present = {}, {}
        for i, name in enumerate(network.output_shape()):
            keep = outputs[(last, i)].signals[KEEP]
            present[name] = keep is not None
            if keep is None:  # the cell received nothing: zeros of its shape
                spec = network.cell_specs[last][i]
                keep = RoutedSignal(None, None, None, _stem_scale_shape(stem_out.shape, spec),
                                    stem_out, self.memory_format)
            features[name] = keep.materialize()
        return features, routing, present

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
