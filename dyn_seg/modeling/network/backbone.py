"""The Dynamic Routing backbone: fixed stem, init cell and the routing space of cells."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..cost.flops import (
    CellFlops,
    RoutingCosts,
    cell_flops,
    routing_costs,
    routing_flops,
    stem_flops,
)
from ..cost.record import RoutingRecord, RoutingRecorder
from ..execution.export_guards import forbid_capture
from ..execution.plans import FaithfulPlan
from ..routing.cell import RoutingCell
from ..routing.layers import ConvSpec, build_convs, depthwise, kaiming_init, pointwise
from ..routing.ops import operation_specs, validate_cell_type
from ..routing.space import (
    CellSpec,
    build_routing_space,
    default_cell_num_list,
    feature_names,
)

__all__ = ["DynamicNetwork", "RoutingRecord", "RoutingRecorder", "stem_layer_specs"]


def stem_layer_specs(init_channel: int, stem_width: int = 64, separable: bool = True
                     ) -> List[List[ConvSpec]]:
    """The stride-4 stem as three blocks of convolutions (``stem_1``, ``stem_2``, ``stem_3``).

    ``stem_1``: 3x3 stride 2 with padding 0 (so 1024 -> 511 -> 256), norm, ReLU. Separable:
    ``stem_2`` depthwise 3x3 + 1x1 (norm, ReLU), ``stem_3`` the same with stride 2 ending in
    ``init_channel`` channels. Otherwise two plain 3x3 convolutions (norm, ReLU).
    """
    w = stem_width
    first = [ConvSpec(3, w, 3, stride=2, padding=0, norm=True, relu=True)]
    if separable:
        return [first, [depthwise(w), pointwise(w, w)],
                [depthwise(w, stride=2), pointwise(w, init_channel)]]
    return [
        first,
        [ConvSpec(w, w, 3, norm=True, relu=True)],
        [ConvSpec(w, init_channel, 3, stride=2, norm=True, relu=True)],
    ]


class DynamicNetwork(Backbone):
    """Stem + init cell + ``layer_num`` layers of routing cells.

    ``forward(x)`` returns the features ``layer_0`` ... (keep outputs of the last layer's
    cells, strides 4, 8, 16, 32) as tensors, a feature whose cell received nothing as zeros
    of its shape, so that any detectron2 head takes them; its :class:`RoutingRecord` goes to
    the recorders of :meth:`recording`. :meth:`forward_with_routing` returns both.

    ``inference``: an optional :class:`~dyn_seg.modeling.network.transforms.FastInference` (a
    plain attribute, never in the state dict). When set, eval-mode ``forward`` runs its
    inference copy of this network (folded norms, the fast plan: closed paths are not
    computed); forward hooks on this module still fire, hooks on its submodules do not
    (they are not the modules that run). Training always runs these modules.
    """

    inference = None  # FastInference or None (see the class docstring)

    @configurable
    def __init__(
        self,
        *,
        layer_num: int = 16,
        cell_num_list: Optional[Sequence[int]] = None,
        init_channel: int = 64,
        cell_type: Sequence[str] = ("sep_conv_3x3", "skip_connect"),
        max_stride: int = 32,
        sept_stem: bool = True,
        stem_width: int = 64,
        norm: str = "BN",
        drop_prob: float = 0.0,
        gate_on: bool = True,
        gate_init_bias: float = 1.5,
        small_gate: bool = False,
        flops_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            layer_num, cell_num_list, init_channel, max_stride: the routing space
                (``cell_num_list`` None: the paper's ``[2, 3, 4, 4, ...]``).
            cell_type: names of the operations summed in every cell.
            sept_stem: separable stem; stem_width: channels inside the stem.
            norm: detectron2 norm name for every norm layer.
            drop_prob: scheduled drop-path probability at the end of training.
            gate_on: soft gates (False: "Network-Fix", every path always on).
            flops_size: (H, W) at which FLOPs are counted; None counts at the input size.
        """
        super().__init__()
        if cell_num_list is None:
            cell_num_list = default_cell_num_list(layer_num, max_stride)
        validate_cell_type(cell_type, init_channel)  # every INIT_CHANNEL rule
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"MODEL.BACKBONE.DROP_PROB={drop_prob} must be in [0, 1).")
        self.init_spec, self.cell_specs = build_routing_space(
            layer_num, cell_num_list, init_channel, max_stride
        )
        self.cell_type = tuple(cell_type)
        self.norm = norm
        self.drop_prob = drop_prob
        self.gate_on = gate_on
        self.small_gate = small_gate
        self.flops_size = tuple(flops_size) if flops_size else None
        self._max_stride = max_stride
        self.step_rate = 0.0  # training progress in [0, 1], set by the meta-architecture
        # recompute each cell's activations in the backward pass (MODEL.FAST.TRAIN_CHECKPOINT)
        self.checkpoint_cells = False
        self._compiled_routing = None  # compile_routing()

        self.stem_specs = stem_layer_specs(init_channel, stem_width, sept_stem)
        self.stem = nn.Sequential()  # children stem_1, stem_2, stem_3 (reference key names)
        for k, block in enumerate(self.stem_specs, start=1):
            # a single convolution stands alone (reference layout ``stem_1.weight``)
            convs = build_convs(block, norm)
            self.stem.add_module(f"stem_{k}", convs if len(block) > 1 else convs[0])

        def make_cell(spec: CellSpec) -> RoutingCell:
            return RoutingCell(
                spec, cell_type, norm, gate_on, gate_init_bias, small_gate,
                layer_rate=(spec.layer + 1) / layer_num,
            )

        self.init_cell = make_cell(self.init_spec)
        self.cells = nn.ModuleList(
            nn.ModuleList(make_cell(s) for s in layer) for layer in self.cell_specs
        )
        last = self.cell_specs[-1]
        self._out_features = feature_names(len(last))
        self._out_feature_channels = {n: s.channels for n, s in zip(self._out_features, last)}
        self._out_feature_strides = {n: s.stride for n, s in zip(self._out_features, last)}
        self._flops_tables: Dict[Tuple[int, int], Tuple[Dict, float]] = {}
        self._routing_costs: Dict[Tuple[int, int], RoutingCosts] = {}
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        b, g = cfg.MODEL.BACKBONE, cfg.MODEL.GATE
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(
                f"The Dynamic Routing stem takes 3-channel images, got {input_shape.channels} "
                "(len(MODEL.PIXEL_MEAN)); use 3 values in MODEL.PIXEL_MEAN / MODEL.PIXEL_STD."
            )
        fix = tuple(cfg.INPUT.FIX_SIZE_FOR_FLOPS)
        if fix and (len(fix) != 2 or min(fix) < 1):
            raise ValueError(
                f"INPUT.FIX_SIZE_FOR_FLOPS={list(fix)} must be [] (count at the input size) or "
                "[H, W] with positive sizes, e.g. [768, 768]."
            )
        return {
            "layer_num": b.LAYER_NUM,
            "cell_num_list": list(b.CELL_NUM_LIST) or None,
            "init_channel": b.INIT_CHANNEL,
            "cell_type": list(b.CELL_TYPE),
            "max_stride": b.MAX_STRIDE,
            "sept_stem": b.SEPT_STEM,
            "stem_width": b.STEM_WIDTH,
            "norm": b.NORM,
            "drop_prob": b.DROP_PROB,
            "gate_on": g.GATE_ON,
            "gate_init_bias": g.GATE_INIT_BIAS,
            "small_gate": g.SMALL_GATE,
            "flops_size": fix or None,
        }

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) weights, zero biases, gate biases at GATE_INIT_BIAS."""
        kaiming_init(self)
        for cell in self.all_cells():
            if cell.gate is not None:
                cell.gate.reset_bias()

    def all_cells(self) -> List[RoutingCell]:
        """The init cell followed by every routed cell, layer by layer."""
        return [self.init_cell] + [c for layer in self.cells for c in layer]

    def __prepare_scriptable__(self):  # torch.jit.script calls it before compiling
        forbid_capture("DynamicNetwork (routing in Python)", kind="scripted")

    @property
    def size_divisibility(self) -> int:
        return self._max_stride

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._max_stride}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.inference is not None and not self.training:
            features, record = self.inference.run_network(self, x)
        else:
            features, record = self.forward_with_routing(x)
        recorders = self.__dict__.get("_recorders")
        if recorders:
            recorders[-1].append(record, x.shape)
        return self.dense_features(features, x)

    @contextlib.contextmanager
    def recording(self) -> Iterator[RoutingRecorder]:
        """While active, every :meth:`forward` appends its record to the yielded
        :class:`RoutingRecorder` (nested recordings: the innermost receives it)."""
        recorder = RoutingRecorder()
        stack = self.__dict__.setdefault("_recorders", [])
        stack.append(recorder)
        try:
            yield recorder
        finally:
            stack.remove(recorder)

    @property
    def execution_plan(self) -> str:
        """What eval-mode :meth:`forward` runs: ``"faithful"`` (these modules, every path)
        or the inference copy's description (:meth:`FastInference.describe`)."""
        return "faithful" if self.inference is None else self.inference.describe()

    def dense_features(self, features: Dict[str, Optional[torch.Tensor]], x: torch.Tensor
                       ) -> Dict[str, torch.Tensor]:
        """``features`` with every None (a cell that received nothing) replaced by zeros of
        the feature's shape for input ``x``: what that cell contributes."""
        if all(v is not None for v in features.values()):
            return features
        shapes = self.output_shape()
        out = {}
        for name, value in features.items():
            if value is None:
                s = shapes[name]
                value = x.new_zeros(x.shape[0], s.channels, -(-x.shape[-2] // s.stride),
                                    -(-x.shape[-1] // s.stride))
            out[name] = value
        return out

    def forward_with_routing(
        self, x: torch.Tensor, plan=None
    ) -> Tuple[Dict[str, Optional[torch.Tensor]], RoutingRecord]:
        """Run the network on normalised, padded images (N, 3, H, W).

        ``plan``: how to execute (:mod:`dyn_seg.modeling.execution.plans`); None is the
        faithful plan.
        Returns the feature dict and the :class:`RoutingRecord` of this batch.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"DynamicNetwork expects a (N, 3, H, W) tensor of images, got shape "
                f"{tuple(x.shape)}; convert grayscale or RGBA images to 3 channels first."
            )
        if plan is None and self._compiled_routing is not None:
            return self._compiled_routing(x)
        return self._routed(x, plan or _FAITHFUL)

    def compile_routing(self, backend: str, mode: str = "default") -> None:
        """Run the faithful plan (training and eval) as one compiled graph
        (``torch.compile(fullgraph=True)``: no routing decision leaves the device, so the
        whole network is one graph; a graph break is an error). State-dict keys unchanged."""
        kwargs = {"backend": backend, "fullgraph": True}
        if backend == "inductor":
            kwargs["mode"] = mode
        self._compiled_routing = torch.compile(self._faithful_routed, **kwargs)

    def __getstate__(self):
        # copies and pickles do not take the compiled function (it is bound to this module)
        state = dict(self.__dict__)
        state["_compiled_routing"] = None
        return state

    def _faithful_routed(self, x: torch.Tensor):
        return self._routed(x, _FAITHFUL)

    def _routed(self, x: torch.Tensor, plan):
        features, routing, present = plan.run(self, x)
        size = self.counting_size(x)
        _, stem = self.flops_table(size)
        expected, real = routing_flops(self.routing_costs(size), routing, x.shape[0], x)
        return features, RoutingRecord(routing, expected, real, stem, present)

    def counting_size(self, x) -> Tuple[int, int]:
        """(H, W) at which FLOPs are counted: ``flops_size`` (``INPUT.FIX_SIZE_FOR_FLOPS``),
        else the (padded) input's. ``x``: the input tensor or its shape. The one rule for
        every FLOPs figure of every routed model (cells, stem and heads)."""
        if self.flops_size is not None:
            return self.flops_size
        shape = x.shape if torch.is_tensor(x) else tuple(x)
        return int(shape[-2]), int(shape[-1])

    def flops_table(self, size: Tuple[int, int]) -> Tuple[Dict[Tuple[int, int], CellFlops], float]:
        """Static per-cell FLOPs and the stem's FLOPs (MFLOPs) at counting size ``size``."""
        if size not in self._flops_tables:
            table = {}
            for spec in [self.init_spec] + [s for layer in self.cell_specs for s in layer]:
                op_specs = [operation_specs(n, spec.channels) for n in self.cell_type]
                table[(spec.layer, spec.scale)] = cell_flops(
                    spec, op_specs, size, self.norm, self.gate_on, self.small_gate
                )
            self._flops_tables[size] = (table, stem_flops(self.stem_specs, size, self.norm))
        return self._flops_tables[size]

    def routing_costs(self, size: Tuple[int, int]) -> RoutingCosts:
        """:func:`~.flops.routing_costs` at counting size ``size`` (cached per size)."""
        if size not in self._routing_costs:
            table, _ = self.flops_table(size)
            init_key = (self.init_spec.layer, self.init_spec.scale)
            self._routing_costs[size] = routing_costs(self.cell_specs, table, init_key)
        return self._routing_costs[size]


_FAITHFUL = FaithfulPlan()


@BACKBONE_REGISTRY.register()
def build_dynamic_routing_backbone(cfg, input_shape: ShapeSpec) -> DynamicNetwork:
    """``MODEL.BACKBONE.NAME: build_dynamic_routing_backbone``."""
    return DynamicNetwork(cfg, input_shape)
