"""Transforms of the same modules for speed: inference copies and training switches.

Inference (:class:`InferenceCopy`, cached per weights by :class:`FastInference`, used in
eval mode by every routed model when ``MODEL.FAST.ENABLED``): a deep copy of the model's
routed network, and of the semantic decoder where the model has one, with batch norms
folded into the convolutions (``torch.nn.utils.fusion.fuse_conv_bn_weights``),
channels_last, optional bfloat16 (the gates' last layer and the logits stay float32) and
optional torch.compile of the static modules, run by the :class:`~.plans.FastPlan`.
Panoptic, instance and classification heads run unchanged on the copy's features.

Training (``MODEL.FAST.TRAIN_*``, applied by
:func:`dyn_seg.modeling.meta_arch.training.prepare_for_training`): channels_last weights and
torch.compile of the static modules, in place; state-dict keys do not change. Mixed
precision training is detectron2's ``AMPTrainer`` (``SOLVER.AMP.*``); the gates' last layer
and the losses run in float32 under autocast.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from types import CodeType
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._pytree import tree_map_only

from ..cost.record import RoutingRecord
from ..execution.capture import CapturedForward, flatten_record, unflatten_record
from ..execution.export_guards import forbid_capture
from ..execution.plans import FastPlan, GraphPlan
from ..routing.gate import SoftGate
from .backbone import DynamicNetwork

__all__ = [
    "COMPILE_MODES",
    "FastInference",
    "InferenceCopy",
    "InferenceOptions",
    "TrainingOptions",
    "compile_forward",
    "compile_modules",
    "fold_batch_norms",
    "fold_conv",
    "static_modules",
]

# torch.compile modes accepted by MODEL.FAST.COMPILE_MODE ("reduce-overhead" adds CUDA graphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
Features = Dict[str, Optional[torch.Tensor]]


def _check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"MODEL.FAST.COMPILE_MODE={mode!r} is not allowed: use one of {list(COMPILE_MODES)}."
        )


# MODEL.FAST.PLAN: the execution plan of the inference copy
PLANS = ("fast", "graph-dense", "graph-conditional")


@dataclass(frozen=True)
class InferenceOptions:
    """``MODEL.FAST.*``: which transforms and which plan the inference copy uses.

    fold_bn: fold eval-mode batch norms into the convolutions. channels_last: NHWC
    convolutions. skip_closed_paths / per_image_routing: the :class:`FastPlan`'s switches
    (both False: every path for every image). bf16: bfloat16 (gates' last layer and logits
    float32). compile: torch.compile backend ("" none, "inductor", "eager" to check
    tracing only): of the static modules for the fast plan, of the whole forward pass as one
    graph (``fullgraph=True``) for the graph plans; compile_mode: one of
    :data:`COMPILE_MODES`. plan_name: one of :data:`PLANS` (the fast plan decides on the
    host; the graph plans on the device, :class:`~.plans.GraphPlan`). cuda_graph: on CUDA,
    capture the graph plan's forward pass once per input shape and replay it
    (:class:`~.capture.CapturedForward`).
    """

    fold_bn: bool = True
    channels_last: bool = True
    skip_closed_paths: bool = True
    per_image_routing: bool = True
    bf16: bool = False
    compile: str = ""
    compile_mode: str = "default"
    plan_name: str = "fast"
    cuda_graph: bool = False

    def __post_init__(self):
        _check_compile_mode(self.compile_mode)
        if self.plan_name not in PLANS:
            raise ValueError(
                f"MODEL.FAST.PLAN={self.plan_name!r} is not allowed: use one of {list(PLANS)}."
            )
        if self.cuda_graph and self.plan_name != "graph-dense":
            raise ValueError(
                f"MODEL.FAST.CUDA_GRAPH=True needs MODEL.FAST.PLAN graph-dense (got "
                f"{self.plan_name!r}): the fast plan decides on the host, and capturing the "
                "conditional plan needs CUDA-graph conditional nodes, which dyn_seg does not "
                "use yet."
            )
        if self.cuda_graph and self.compile_mode == "reduce-overhead":
            raise ValueError(
                "MODEL.FAST.CUDA_GRAPH=True captures CUDA graphs itself: use "
                "MODEL.FAST.COMPILE_MODE default (reduce-overhead would capture them twice)."
            )
        self.plan()  # validates the plan's switches

    @classmethod
    def from_config(cls, cfg) -> InferenceOptions:
        f = cfg.MODEL.FAST
        return cls(f.FOLD_BN, f.CHANNELS_LAST, f.SKIP_CLOSED_PATHS, f.PER_IMAGE_ROUTING,
                   f.BF16, f.COMPILE, f.COMPILE_MODE, f.PLAN, f.CUDA_GRAPH)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def is_graph(self) -> bool:
        """True for the plans without host decisions (one program per input shape)."""
        return self.plan_name != "fast"

    def plan(self) -> Union[FastPlan, GraphPlan]:
        if self.is_graph:
            return GraphPlan(self.plan_name == "graph-conditional", self.memory_format)
        return FastPlan(self.skip_closed_paths, self.per_image_routing, self.memory_format)

    def describe(self) -> dict:
        """The switches as a plain dict (for benchmark records)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def compile_forward(module: nn.Module, backend: str, mode: str = "default") -> nn.Module:
    """Compile ``module.forward`` in place with ``backend`` ("" leaves it eager).

    Between two gate decisions the network is static (stem, a cell's operations, gate
    convolution, transitions, decoder); those modules are compiled one by one and the
    routing between them stays in Python. The module keeps its class and state-dict keys.
    """
    compile_modules([module], backend, mode)
    return module


def compile_modules(modules: Iterable[nn.Module], backend: str, mode: str = "default") -> None:
    """:func:`compile_forward` for several modules; modules of one kind share compiled code.

    torch.compile caches compiled versions per code object, at most ``recompile_limit``
    (8) of them, and wraps callables from torch's own files (``nn.Conv2d.forward``...) in
    one shared wrapper: the dozens of modules of a network would share one cache, exhaust it
    after a few shapes and run the rest eagerly (seen on a GPU: compiled inference no
    faster than eager). Here each kind of module (same class and configuration, i.e. the
    same ``repr``: layers, channels, strides) calls its forward through a wrapper with a
    code object of its own. Modules of one kind differ only in their weights, which
    torch.compile passes to the compiled code as inputs, so a kind is compiled once per
    input shape rather than once per module (sharing a code object only shares the cache:
    each compiled version is guarded, so a module it does not fit gets its own). With CUDA
    graphs each module is a kind of its own (:func:`_compile_kind`).
    """
    if not backend:
        return
    codes: Dict[object, CodeType] = {}
    for module in modules:
        kind = _compile_kind(module, backend, mode)
        wrapper = _calling(module._call_impl)
        # replace() always builds a new code object: one per kind
        wrapper.__code__ = codes.setdefault(kind, wrapper.__code__.replace())
        _install_compiled_call(module, compile_function(wrapper, backend, mode))


def _install_compiled_call(module: nn.Module, compiled) -> None:
    """Make ``module(...)`` run ``compiled`` (which calls the module's own ``_call_impl``:
    hooks, then ``forward``). This is what ``nn.Module.compile`` does (it sets
    ``_compiled_call_impl``, checked by ``nn.Module.__call__``; PyTorch 2.14), with our
    compiled function instead of one sharing ``_call_impl``'s code object (and so its
    compile cache) among all modules. ``forward`` and the state-dict keys stay as they are;
    copies (``copy.deepcopy``, pickling) drop it, as they drop ``nn.Module.compile``."""
    module._compiled_call_impl = compiled


def _compile_kind(module: nn.Module, backend: str, mode: str) -> object:
    """Which modules share compiled code: those of one class and configuration, except
    with CUDA graphs ("reduce-overhead"), where a graph records its weights' addresses and
    modules of one kind would replace each other's recordings: there every module is its
    own kind."""
    if backend == "inductor" and mode == "reduce-overhead":
        return id(module)
    return (type(module), repr(module))


def _calling(method):
    """A plain function that calls ``method`` (defined here, so torch.compile traces it
    instead of wrapping it)."""
    def call(*args, **kwargs):
        return method(*args, **kwargs)

    return call


def compile_function(fn, backend: str, mode: str = "default", fullgraph: bool = False):
    """``torch.compile(fn)`` with ``backend`` (and ``mode`` for inductor).

    With CUDA graphs ("reduce-overhead") a graph's outputs live in memory that its next
    replay overwrites. A routed forward calls the same static module several times (per
    layer, per sub-batch) and keeps earlier outputs, so each call starts a new graph step
    and its outputs are cloned out of the graph's memory.
    """
    kwargs = {"backend": backend, "fullgraph": fullgraph}
    if backend == "inductor":
        kwargs["mode"] = mode
    compiled = torch.compile(fn, **kwargs)
    if backend != "inductor" or mode != "reduce-overhead":
        return compiled

    def run_graph(*args, **kw):
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kw)
        return tree_map_only(torch.Tensor, torch.clone, out)

    return run_graph


def _foldable(norm: Optional[nn.Module]) -> bool:
    """True when ``norm`` is a per-channel affine map at inference (BN with running stats)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, _BatchNorm) and norm.running_mean is not None


def fold_conv(conv: Conv2d) -> nn.Module:
    """A plain convolution (plus in-place ReLU) equal to eval-mode detectron2 ``conv`` with
    its norm (if any) folded in; ``conv`` itself when its norm cannot be folded (e.g.
    GroupNorm)."""
    norm = conv.norm
    if norm is not None and not _foldable(norm):
        return conv
    w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    if norm is not None:
        # fuse_conv_bn_weights fed float64 copies: folding in float32 moves logits of
        # networks with large running variances by more than the 1e-4 parity tolerance
        w, b = fuse_conv_bn_weights(
            w.double(), None if b is None else b.double(),
            norm.running_mean.double(), norm.running_var.double(), norm.eps,
            None if norm.weight is None else norm.weight.detach().double(),
            None if norm.bias is None else norm.bias.detach().double(),
        )
    # a plain torch convolution (detectron2's wrapper adds per-call checks), built on the
    # meta device (no random init), then given the weights
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=b is not None,
                      device="meta")
    dtype = conv.weight.dtype
    plain.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
    if b is not None:
        plain.bias = nn.Parameter(b.detach().to(dtype), requires_grad=False)
    act = conv.activation
    if act is None:
        return plain
    if act in (F.relu, F.relu_, torch.relu) or isinstance(act, nn.ReLU):
        return nn.Sequential(plain, nn.ReLU(inplace=True))  # the fresh output, in place
    raise ValueError(
        f"Cannot fold a convolution with activation {act!r} (only ReLU is known); set "
        "MODEL.FAST.FOLD_BN=False."
    )


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every detectron2 ``Conv2d`` of ``module`` without a norm or with a
    foldable one by a plain convolution, the norm folded in (eval-mode semantics). Other
    norms (e.g. GroupNorm) stay. Returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, Conv2d) and (child.norm is None or _foldable(child.norm)):
            setattr(module, name, fold_conv(child))
        else:
            fold_batch_norms(child)
    if isinstance(module, nn.Sequential) and all(n.isdigit() for n, _ in module.named_children()):
        # one flat sequence of unnamed layers: fewer module calls
        layers = [m for child in module
                  for m in (child if type(child) is nn.Sequential else [child])]
        while len(module):
            del module[0]
        for layer in layers:
            module.append(layer)
    return module


def static_modules(backbone: nn.Module):
    """The modules between two gate decisions: stem, operations, gate layers, transitions."""
    static = [backbone.stem]
    for cell in backbone.all_cells():
        static += list(cell.ops)
        static += [m for m in (cell.gate, cell.up, cell.down) if m is not None]
    return static


class _Stride4Logits(nn.Module):
    """The decoder's ``stride4_logits`` as a module of its own, so that it compiles like
    the network's static modules (:func:`compile_modules`)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features, present=None):
        return self.head.stride4_logits(features, present)


class InferenceCopy(nn.Module):
    """A transformed copy of a routed network (and of a semantic decoder), run by a
    :class:`FastPlan`.

    ``InferenceCopy(network, options)`` (a :class:`DynamicNetwork`): ``forward(images)`` on
    normalised, padded images (N, 3, H, W) returns ``(features, routing)`` as
    ``network.forward_with_routing`` does. ``InferenceCopy(segmentor, options)`` (a
    ``DynamicSemanticSegmentor``): the network and the decoder ``sem_seg_head``;
    ``forward(images)`` returns ``(logits, features, routing)`` with float32 logits
    (N, classes, H, W) at input resolution, as the faithful ``sem_seg_head`` returns them.
    Built from the current weights; rebuild after they change (:class:`FastInference` does).
    """

    def __init__(self, source: nn.Module, options: Optional[InferenceOptions] = None):
        super().__init__()
        self.options = options or InferenceOptions()
        o = self.options
        if isinstance(source, DynamicNetwork):
            network, head = source, None
        else:
            network, head = source.backbone, source.sem_seg_head
        # the network's own FastInference (with this copy in its cache) is not copied
        self.backbone = copy.deepcopy(network, {id(network.inference): None}).eval()
        self.head = None if head is None else copy.deepcopy(head).eval()
        self.plan = o.plan()
        self.dtype = torch.bfloat16 if o.bf16 else torch.float32
        for part in (self.backbone, self.head):
            if part is None:
                continue
            for p in part.parameters():
                p.requires_grad_(False)
            if o.fold_bn:
                fold_batch_norms(part)
            part.to(dtype=self.dtype, memory_format=o.memory_format)
        for m in self.backbone.modules():  # the gates' last layer stays float32
            if isinstance(m, SoftGate):
                m.proj.float()
                m.fast_proj = True
        self.eval()
        self.program: Optional[CapturedForward] = None
        self.logits = None if self.head is None else _Stride4Logits(self.head)
        if o.is_graph:
            # the whole forward pass (the network, and the decoder where there is one) as one
            # program: one graph to compile, capture, replay
            fn = self.graph_forward
            if o.compile:
                fn = compile_function(fn, o.compile, o.compile_mode, fullgraph=True)
            self.program = CapturedForward(fn, o.cuda_graph)
        else:
            # the fast plan decides routes on the host between modules: compile the modules
            compile_modules(static_modules(self.backbone), o.compile, o.compile_mode)
            if self.logits is not None:
                compile_modules([self.logits], o.compile, o.compile_mode)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "InferenceCopy is for inference only (norms are folded); train the model it "
                "was built from and build a new copy."
            )
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor):
        if self.program is not None:
            return self._assemble(images, self.program(images))
        return self._run(images)

    def cast_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the copy's dtype and memory layout."""
        return images.to(self.dtype).contiguous(memory_format=self.options.memory_format)

    def _run(self, images: torch.Tensor):
        x = self.cast_input(images)
        features, routing = self.backbone.forward_with_routing(x, self.plan)
        if self.head is None:
            if self.dtype != images.dtype:  # detectron2 heads take the input's dtype
                features = {k: None if v is None else v.to(images.dtype)
                            for k, v in features.items()}
            return features, routing
        # float32 NCHW before the x4 upsampling: the 16x larger result costs far more
        logits = self.logits(features, routing.feature_present).float().contiguous()
        return self.head.upsample(logits), features, routing

    def _layout(self) -> Tuple[list, list, list]:
        net = self.backbone
        keys = [(net.init_spec.layer, net.init_spec.scale)] + [
            (s.layer, s.scale) for layer in net.cell_specs for s in layer]
        widths = [net.init_spec.num_paths] + [s.num_paths for layer in net.cell_specs
                                              for s in layer]
        return keys, widths, list(net.output_shape())

    def graph_forward(self, images: torch.Tensor) -> Tuple:
        """The forward pass as tensors only (graph plans): ``(logits, features in name
        order, *flatten_record(...))``, without ``logits`` for a network alone -- what is
        compiled, captured and exported."""
        with torch.no_grad():
            if self.head is None:
                features, routing = self._run(images)
                logits = ()
            else:
                logits, features, routing = self._run(images)
                logits = (logits,)
            keys, widths, names = self._layout()
            flat = flatten_record(routing, keys, names, images.shape[0], widths, images)
            return logits + (tuple(features[n] for n in names),) + flat

    def _assemble(self, images: torch.Tensor, outputs: Tuple):
        """``graph_forward``'s tensors as ``forward`` returns them (the record rebuilt)."""
        if self.head is not None:
            logits, *outputs = outputs
        features, *flat = outputs
        keys, _, names = self._layout()
        _, stem = self.backbone.flops_table(self.backbone.counting_size(images))
        record = unflatten_record(tuple(flat), keys, names, stem)
        features = dict(zip(names, features))
        return (features, record) if self.head is None else (logits, features, record)


def _weights_key(module: nn.Module) -> tuple:
    forbid_capture("FastInference's weight cache (keyed by data pointers)")
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class FastInference:
    """The eval-mode inference of a routed model on cached copies (``MODEL.FAST.*``).

    * ``fast(segmentor, images)`` -> ``(logits, features, routing)`` from an
      :class:`InferenceCopy` of a ``DynamicSemanticSegmentor``'s network and decoder;
    * ``fast.run_network(network, images)`` -> ``(features, routing)`` from an
      :class:`InferenceCopy` of a :class:`DynamicNetwork` alone (what
      ``DynamicNetwork.forward`` runs in eval mode for panoptic, instance and
      classification models; their heads run on the features).

    A copy is rebuilt whenever a parameter or buffer of its source changes (optimizer
    steps, checkpoint loading, moving to another device). A plain object, not a submodule:
    copies never enter the state dict; ``copy.deepcopy`` gives a new, empty cache.
    """

    def __init__(self, options: Optional[InferenceOptions] = None):
        self.options = options or InferenceOptions()
        self._copy: Optional[InferenceCopy] = None
        self._key: Optional[tuple] = None

    @classmethod
    def from_config(cls, cfg) -> Optional[FastInference]:
        """``MODEL.FAST.*``; None when ``MODEL.FAST.ENABLED`` is False."""
        return cls(InferenceOptions.from_config(cfg)) if cfg.MODEL.FAST.ENABLED else None

    def __deepcopy__(self, memo) -> FastInference:
        return FastInference(self.options)

    def describe(self) -> str:
        """The options as ``key=value`` text (what ``execution_plan`` shows)."""
        return ", ".join(f"{k}={v}" for k, v in self.options.describe().items())

    _weights_key = staticmethod(_weights_key)

    def inference_copy(self, source: nn.Module) -> InferenceCopy:
        """The copy of ``source``, rebuilt if its weights changed since the last call."""
        key = (id(source), _weights_key(source))
        if self._copy is None or key != self._key:
            self._copy = InferenceCopy(source, self.options)
            self._key = key
        return self._copy

    def __call__(self, model: nn.Module, images: torch.Tensor
                 ) -> Tuple[torch.Tensor, Features, RoutingRecord]:
        return self.inference_copy(model)(images)

    def run_network(self, network: nn.Module, images: torch.Tensor
                    ) -> Tuple[Features, RoutingRecord]:
        return self.inference_copy(network)(images)


TRAIN_COMPILE_SCOPES = ("modules", "network")


@dataclass(frozen=True)
class TrainingOptions:
    """``MODEL.FAST.TRAIN_CHANNELS_LAST`` / ``TRAIN_COMPILE`` / ``TRAIN_COMPILE_SCOPE`` /
    ``TRAIN_CHECKPOINT`` (and ``COMPILE_MODE``)."""

    channels_last: bool = False
    compile: str = ""
    compile_mode: str = "default"
    compile_scope: str = "modules"
    checkpoint: bool = False

    def __post_init__(self):
        _check_compile_mode(self.compile_mode)
        if self.compile_scope not in TRAIN_COMPILE_SCOPES:
            raise ValueError(
                f"MODEL.FAST.TRAIN_COMPILE_SCOPE={self.compile_scope!r} is not allowed: use "
                f"one of {list(TRAIN_COMPILE_SCOPES)}."
            )

    @classmethod
    def from_config(cls, cfg) -> TrainingOptions:
        f = cfg.MODEL.FAST
        return cls(f.TRAIN_CHANNELS_LAST, f.TRAIN_COMPILE, f.COMPILE_MODE,
                   f.TRAIN_COMPILE_SCOPE, f.TRAIN_CHECKPOINT)
