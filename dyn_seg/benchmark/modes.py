"""The benchmark's modes: which inference copy or training switches each name runs.

Every mode is a name and the keyword arguments of :class:`InferenceOptions` (inference) or
:class:`TrainingOptions` plus bfloat16 autocast (training) that it stands for. A mode is
*available* when this version's options accept its arguments: modes of execution plans
and switches that the installed model code does not have yet (graph plans, whole-network
compilation, activation checkpointing) are listed all the same and reported as
unavailable with the reason, so one benchmark command works across versions and the new
modes appear as soon as the model code has them. Some modes need CUDA (captured CUDA
graphs); on another device they are unavailable, with that reason.

``faithful`` is the model's own modules in eager float32 (no inference copy).

Bridges: where the model code already has a plan or switch but its options do not name it
yet, a mode runs it through the options it has and sets the rest on the built module, and
its records say so (``bridge``): the graph plans as a
:class:`~dyn_seg.modeling.execution.plans.GraphPlan`
set as an inference copy's plan, checkpointing as the backbone's ``checkpoint_cells``.
Once the options accept the mode's own spelling, that is used instead.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from dyn_seg.modeling.network.transforms import InferenceOptions, TrainingOptions

__all__ = [
    "INFERENCE_MODE_SPECS",
    "TRAINING_MODE_SPECS",
    "ModeSpec",
    "ResolvedMode",
    "UnavailableMode",
    "available",
    "inference_options",
    "is_compiled",
    "resolve",
    "training_options",
]

Kwargs = Dict[str, object]


@dataclass(frozen=True)
class ModeSpec:
    """``spellings``: alternative keyword-argument sets for the options class, tried in
    order (the first that the installed options accept is used); an empty tuple means the
    faithful plan. ``bf16``: training under bfloat16 autocast. ``cuda_only``: the mode
    needs a CUDA device. ``about``: one line for ``--help`` and the records."""

    spellings: Tuple[Kwargs, ...]
    about: str
    bf16: bool = False
    cuda_only: bool = False
    bridge: str = ""  # "graph-dense" | "graph-conditional" | "checkpoint" (see the docstring)


@dataclass(frozen=True)
class ResolvedMode:
    """A mode as this version runs it: ``options`` (None: faithful), ``bf16`` autocast
    (training), ``adapt`` applied to the built inference copy / training replica (a
    bridge; None otherwise) and ``bridge``, a description of it for the records."""

    name: str
    options: object
    bf16: bool = False
    adapt: Optional[Callable[[nn.Module], None]] = None
    bridge: str = ""


class UnavailableMode(ValueError):
    """A mode this version or device cannot run; the message says why."""


def _graph(plan: str, **extra) -> Tuple[Kwargs, ...]:
    return (dict(plan_name=plan, **extra), dict(plan=plan, **extra))


def _graph_spec(plan: str, about: str, **extra) -> ModeSpec:
    return ModeSpec(_graph(plan, **extra), about, bridge=plan)


def _graph_compiled(plan: str, **extra) -> Tuple[Kwargs, ...]:
    # whole-copy torch.compile(fullgraph=True) of the graph plan (a graph plan's compile
    # switch compiles the whole forward pass as one graph)
    return (dict(plan_name=plan, compile="inductor", **extra),
            dict(plan=plan, compile_graph=True, **extra))


def _graph_replayed(plan: str) -> Tuple[Kwargs, ...]:
    # the graph plan captured once into a CUDA graph and replayed
    return (dict(plan_name=plan, cuda_graph=True), dict(plan=plan, cuda_graph=True))


# Inference: the fast plan's cumulative steps (each adds one optimisation to the previous),
# then the graph plans beside it.
INFERENCE_MODE_SPECS: Dict[str, ModeSpec] = {
    "faithful": ModeSpec((), "the model's own modules, eager float32, every path"),
    "fast-base": ModeSpec((dict(fold_bn=False, channels_last=False, skip_closed_paths=False,
                                per_image_routing=False),),
                          "fast plan, every path computed, no transform"),
    "fast-fold": ModeSpec((dict(channels_last=False, skip_closed_paths=False,
                                per_image_routing=False),), "+ batch norms folded"),
    "fast-fold-cl": ModeSpec((dict(skip_closed_paths=False, per_image_routing=False),),
                             "+ channels_last"),
    "fast-fold-cl-skip": ModeSpec((dict(per_image_routing=False),),
                                  "+ paths closed for the whole batch skipped"),
    "fast": ModeSpec(({},), "+ per-image routing (the default eval-mode inference)"),
    "fast-bf16": ModeSpec((dict(bf16=True),), "fast plan in bfloat16"),
    "fast-compile": ModeSpec((dict(compile="inductor"),),
                             "fast plan, static modules compiled one by one"),
    "fast-compile-graphs": ModeSpec(
        (dict(compile="inductor", compile_mode="reduce-overhead"),),
        "fast plan, static modules compiled with CUDA graphs per module and shape"),
    "graph-dense": _graph_spec("graph-dense",
                               "graph plan: every path computed and weighted, no host read"),
    "graph-conditional": _graph_spec("graph-conditional",
                                     "graph plan: cell bodies and transitions guarded by "
                                     "device predicates, closed paths not computed"),
    "graph-dense-bf16": _graph_spec("graph-dense", "graph-dense in bfloat16", bf16=True),
    "graph-conditional-bf16": _graph_spec("graph-conditional", "graph-conditional in bfloat16",
                                          bf16=True),
    "graph-dense-compile": ModeSpec(_graph_compiled("graph-dense"),
                                    "graph-dense, one torch.compile(fullgraph=True)"),
    "graph-conditional-compile": ModeSpec(_graph_compiled("graph-conditional"),
                                          "graph-conditional, one "
                                          "torch.compile(fullgraph=True)"),
    "graph-dense-compile-bf16": ModeSpec(_graph_compiled("graph-dense", bf16=True),
                                         "graph-dense-compile in bfloat16"),
    "graph-conditional-compile-bf16": ModeSpec(_graph_compiled("graph-conditional", bf16=True),
                                               "graph-conditional-compile in bfloat16"),
    "graph-dense-cudagraph": ModeSpec(_graph_replayed("graph-dense"),
                                      "graph-dense captured in one CUDA graph, replayed",
                                      cuda_only=True),
    "graph-conditional-cudagraph": ModeSpec(_graph_replayed("graph-conditional"),
                                            "graph-conditional captured in one CUDA graph "
                                            "(conditional nodes or the documented fallback), "
                                            "replayed", cuda_only=True),
}

_COMPILE_GRAPH = (dict(compile="inductor", compile_scope="network"), dict(compile_graph=True))


def _with(spellings: Tuple[Kwargs, ...], **extra) -> Tuple[Kwargs, ...]:
    return tuple(dict(s, **extra) for s in spellings)


TRAINING_MODE_SPECS: Dict[str, ModeSpec] = {
    "faithful": ModeSpec(({},), "eager float32"),
    "channels_last": ModeSpec((dict(channels_last=True),), "channels_last weights"),
    "bf16": ModeSpec(({},), "bfloat16 autocast", bf16=True),
    "channels_last-bf16": ModeSpec((dict(channels_last=True),), "channels_last + bf16",
                                   bf16=True),
    "compile": ModeSpec((dict(compile="inductor"),), "static modules compiled one by one"),
    "channels_last-bf16-compile": ModeSpec((dict(channels_last=True, compile="inductor"),),
                                           "channels_last + bf16 + static modules compiled",
                                           bf16=True),
    "checkpoint": ModeSpec((dict(checkpoint=True),), "per-cell activation checkpointing",
                           bridge="checkpoint"),
    "bf16-checkpoint": ModeSpec((dict(checkpoint=True),), "bf16 + per-cell checkpointing",
                                bf16=True, bridge="checkpoint"),
    "compile-graph": ModeSpec(_COMPILE_GRAPH, "whole network, torch.compile(fullgraph=True)"),
    "bf16-compile-graph": ModeSpec(_COMPILE_GRAPH, "bf16 + whole-network compile", bf16=True),
    "channels_last-bf16-compile-graph": ModeSpec(
        _with(_COMPILE_GRAPH, channels_last=True),
        "channels_last + bf16 + whole-network compile", bf16=True),
    "bf16-compile-graph-checkpoint": ModeSpec(
        _with(_COMPILE_GRAPH, checkpoint=True),
        "bf16 + whole-network compile + per-cell checkpointing", bf16=True),
}


def _build(cls, spec: ModeSpec, name: str, reasons: List[str]):
    """The options of the first spelling ``cls`` accepts; None (``reasons`` filled)."""
    names = {f.name for f in dataclasses.fields(cls)}
    for kwargs in spec.spellings:
        missing = sorted(set(kwargs) - names)
        if missing:
            reasons.append(f"{cls.__name__} has no {', '.join(missing)}")
            continue
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # the options reject the values
            reasons.append(f"{cls.__name__}({_spell(kwargs)}): {e}")
    return None


def _unavailable(spec: ModeSpec, name: str, reasons: List[str]) -> UnavailableMode:
    return UnavailableMode(f"mode {name!r} ({spec.about}) is not available in this version: "
                           + "; ".join(reasons or ["no spelling"]))


def _spell(kwargs: Kwargs) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _check_device(spec: ModeSpec, name: str, device: Union[str, torch.device, None]) -> None:
    if spec.cuda_only and device is not None and torch.device(device).type != "cuda":
        raise UnavailableMode(f"mode {name!r} ({spec.about}) needs a CUDA device, not "
                              f"{torch.device(device).type}")


def _spec(table: Dict[str, ModeSpec], name: str, kind: str) -> ModeSpec:
    if name not in table:
        raise ValueError(f"Unknown {kind} mode {name!r}; known: {list(table)}.")
    return table[name]


def _graph_bridge(spec: ModeSpec, name: str, reasons: List[str]) -> Optional[ResolvedMode]:
    try:
        from dyn_seg.modeling.execution.plans import GraphPlan
    except ImportError:
        reasons.append("dyn_seg.modeling.execution.plans has no GraphPlan")
        return None
    base = {k: v for k, v in spec.spellings[0].items() if k not in ("plan", "plan_name")}
    options = _build(InferenceOptions, ModeSpec((base,), spec.about), name, reasons)
    if options is None:
        return None
    conditional = spec.bridge == "graph-conditional"

    def adapt(copy: nn.Module) -> None:
        copy.plan = GraphPlan(conditional=conditional,
                              memory_format=copy.options.memory_format)

    return ResolvedMode(name, options, adapt=adapt,
                        bridge=f"GraphPlan(conditional={conditional}) as the plan of an "
                               f"InferenceCopy({_spell(base) or 'defaults'})")


def _checkpoint_bridge(spec: ModeSpec, name: str, reasons: List[str]) -> Optional[ResolvedMode]:
    from dyn_seg.modeling import plans

    if "checkpoint_cells" not in inspect.getsource(plans):
        reasons.append("the faithful plan has no per-cell checkpointing")
        return None
    base = {k: v for k, v in spec.spellings[0].items() if k != "checkpoint"}
    options = _build(TrainingOptions, ModeSpec((base,), spec.about), name, reasons)
    if options is None:
        return None

    def adapt(model: nn.Module) -> None:
        model.backbone.checkpoint_cells = True

    return ResolvedMode(name, options, spec.bf16, adapt,
                        bridge="backbone.checkpoint_cells = True")


def resolve(kind: str, name: str, device: Union[str, torch.device, None] = None
            ) -> ResolvedMode:
    """How this version runs mode ``name`` of ``kind`` ("inference" or "train"); raises
    :class:`UnavailableMode` (why) when this version or ``device`` cannot run it."""
    inference = kind == "inference"
    table = INFERENCE_MODE_SPECS if inference else TRAINING_MODE_SPECS
    spec = _spec(table, name, "inference" if inference else "training")
    _check_device(spec, name, device)
    if not spec.spellings:
        return ResolvedMode(name, None)
    reasons: List[str] = []
    options = _build(InferenceOptions if inference else TrainingOptions, spec, name, reasons)
    if options is not None:
        return ResolvedMode(name, options, spec.bf16)
    bridged = None
    if spec.bridge.startswith("graph-"):
        bridged = _graph_bridge(spec, name, reasons)
    elif spec.bridge == "checkpoint":
        bridged = _checkpoint_bridge(spec, name, reasons)
    if bridged is None:
        raise _unavailable(spec, name, reasons)
    return bridged


def inference_options(name: str, device: Union[str, torch.device, None] = None
                      ) -> Optional[InferenceOptions]:
    """The options of inference mode ``name`` (None: the faithful plan); see :func:`resolve`."""
    return resolve("inference", name, device).options


def training_options(name: str, device: Union[str, torch.device, None] = None
                     ) -> Tuple[TrainingOptions, bool]:
    """``(TrainingOptions, bf16 autocast)`` of training mode ``name``; see :func:`resolve`."""
    mode = resolve("train", name, device)
    return mode.options, mode.bf16


def available(kind: str, names: Optional[Sequence[str]] = None,
              device: Union[str, torch.device, None] = None) -> Tuple[List[str], Dict[str, str]]:
    """``(available names, {unavailable name: reason})`` among ``names`` (default: all) of
    ``kind`` ("inference" or "train"), in order."""
    table = INFERENCE_MODE_SPECS if kind == "inference" else TRAINING_MODE_SPECS
    ok, missing = [], {}
    for name in names if names is not None else list(table):
        try:
            resolve(kind, name, device)
            ok.append(name)
        except UnavailableMode as e:
            missing[name] = str(e)
    return ok, missing


def is_compiled(options) -> bool:
    """True when ``options`` (inference or training options, or None) compile anything: the
    dispatch counter cannot see inside compiled code (torch.compile runs eagerly under a
    dispatch mode), so such modes are counted with the profiler."""
    if options is None:
        return False
    return bool(getattr(options, "compile", "")) or any(
        bool(getattr(options, f, False)) for f in ("compile_graph", "fullgraph", "cuda_graph",
                                                   "capture"))
