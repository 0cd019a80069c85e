"""Export an :class:`~.module.ExportableSegmentor` to TorchScript, ONNX or a ``.pt2``.

Formats and methods (``tools/export_model.py --format F --export-method M``):

* ``pt2`` / ``torch-export``: ``torch.export`` ExportedProgram (``torch.export.save``);
  the conditional variant keeps every guarded region as ``torch.cond``.
* ``onnx`` / ``onnx-dynamo``: torch's dynamo-based ONNX exporter (onnxscript) on that
  ExportedProgram; ``torch.cond`` becomes an ONNX ``If`` node.
* ``torchscript`` or ``onnx`` / ``tracing``: detectron2's ``TracingAdapter`` and
  ``torch.jit.trace`` (the legacy ONNX exporter for ``onnx``), as detectron2's
  ``tools/deploy/export_model.py`` does: dense variant only (a trace has no branches).

Next to the model file, ``model.json`` records what a runtime needs: input size and name,
output names in order, the variant and the gate columns.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .module import OUTPUT_NAMES, ExportableSegmentor, gate_columns

__all__ = ["EXPORT_METHODS", "FORMATS", "ExportResult", "check_combination", "export",
           "metadata_path"]

FORMATS = ("onnx", "pt2", "torchscript")
EXPORT_METHODS = ("onnx-dynamo", "torch-export", "tracing")
INPUT_NAME = "image"
_FILE_NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.ts"}
# which methods write which format
_METHODS = {"onnx": ("onnx-dynamo", "tracing"), "pt2": ("torch-export",),
            "torchscript": ("tracing",)}


@dataclass
class ExportResult:
    """What :func:`export` wrote: the model file and its ``model.json`` metadata."""

    path: str
    metadata: Dict = field(default_factory=dict)


def metadata_path(model_path: str) -> str:
    """``model.json`` beside an exported model file."""
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), "model.json")


def check_combination(fmt: str, method: str, variant: str) -> None:
    """A clear error for a format / export method / variant that do not go together."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not allowed: use one of {list(FORMATS)}.")
    if method not in EXPORT_METHODS:
        raise ValueError(
            f"--export-method {method!r} is not allowed: use one of {list(EXPORT_METHODS)}.")
    if method not in _METHODS[fmt]:
        raise ValueError(
            f"--format {fmt} is written by --export-method {' or '.join(_METHODS[fmt])}, not "
            f"{method}."
        )
    if method == "tracing" and variant != "dense":
        raise ValueError(
            "--export-method tracing records one execution: it keeps no branch, so it "
            "exports the dense variant only (--variant dense). For per-image skipping export "
            "the conditional variant with --export-method torch-export (.pt2) or onnx-dynamo "
            "(.onnx)."
        )


def export(module: ExportableSegmentor, sample: torch.Tensor, fmt: str, method: str,
           output_dir: str, extra_metadata: Optional[Dict] = None,
           program: Optional[torch.export.ExportedProgram] = None) -> ExportResult:
    """Export ``module`` traced on ``sample`` ((N, 3, H, W) float image batch) into
    ``output_dir`` (created). ``program``: an ExportedProgram of ``module`` on ``sample`` to
    reuse (``onnx-dynamo`` converts it instead of exporting again)."""
    check_combination(fmt, method, module.variant)
    module.check_size(int(sample.shape[-2]), int(sample.shape[-1]))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _FILE_NAMES[fmt])
    sample = sample.float()
    if method == "tracing":
        outputs = _export_tracing(module, sample, fmt, path)
    elif method == "torch-export":
        torch.export.save(program or export_program(module, sample), path)
        outputs = list(OUTPUT_NAMES)
    else:
        _export_onnx(program or export_program(module, sample), sample, path)
        outputs = list(OUTPUT_NAMES)
    metadata = {
        "format": fmt,
        "export_method": method,
        "variant": module.variant,
        "input": INPUT_NAME,
        "input_shape": list(sample.shape),
        "input_format": "BGR float 0-255, NCHW, fixed size",
        "outputs": outputs,
        "gate_columns": [list(c) for c in gate_columns(module.copy.backbone)],
        **(extra_metadata or {}),
    }
    with open(metadata_path(path), "w") as f:
        json.dump(metadata, f, indent=1)
    return ExportResult(path, metadata)


def export_program(module: ExportableSegmentor, sample: torch.Tensor
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` at ``sample``'s shape (static shapes).

    Strict mode (dynamo traces the Python once): each ``torch.cond`` of the conditional
    variant is traced inside that one pass, several times faster than non-strict export,
    which compiles every branch apart."""
    with torch.no_grad():
        module(sample)  # fills the FLOPs tables for this size outside the trace
        return torch.export.export(module, (sample,), strict=True)


def _export_onnx(program: torch.export.ExportedProgram, sample: torch.Tensor, path: str
                 ) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxscript's notes on empty attribute lists
        onnx_program = torch.onnx.export(program, (sample,), dynamo=True,
                                         input_names=[INPUT_NAME],
                                         output_names=list(OUTPUT_NAMES), verbose=False)
    onnx_program.save(path)
    _prune_onnx(path)


def _used_names(graph) -> set:
    """Every value name a node of ``graph`` or of its subgraphs reads (a branch of an
    ``If`` may read values of the outer graph by name), and the graph's outputs."""
    import onnx

    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _used_names(attr.g)
    return names


def _prune_onnx(path: str) -> None:
    """Drop the top-level initializers nothing reads and the nodes' source-location
    metadata. The exporter moves the weights a ``torch.cond`` branch uses into the
    branch's ``If`` subgraph but keeps the top-level copies: without this the conditional
    file holds every such weight twice."""
    import onnx

    model = onnx.load(path)
    used = _used_names(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)

    def strip(graph):
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g)

    strip(model.graph)
    onnx.save(model, path)


def tracing_adapter(module: ExportableSegmentor, sample: torch.Tensor):
    """detectron2's ``TracingAdapter`` around ``module`` (its dict outputs flatten to a
    tuple in the order of ``adapter.outputs_schema``)."""
    from detectron2.export import TracingAdapter

    return TracingAdapter(module, (sample,))


def traced_output_names(adapter) -> List[str]:
    """Output names in the order the traced module returns them (detectron2's dict schema
    sorts the keys)."""
    schema = adapter.outputs_schema
    keys = getattr(schema, "keys", None)
    return list(keys) if keys is not None else list(OUTPUT_NAMES)


def _export_tracing(module: ExportableSegmentor, sample: torch.Tensor, fmt: str, path: str
                    ) -> List[str]:
    adapter = tracing_adapter(module, sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracing's deprecation and tracer notes
        adapter(*adapter.flattened_inputs)  # records the outputs' schema
        names = traced_output_names(adapter)
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
            torch.jit.save(traced, path)
        else:
            torch.onnx.export(adapter, adapter.flattened_inputs, path, dynamo=False,
                              input_names=[INPUT_NAME], output_names=names)
    return names


def sample_size(size: Tuple[int, int], divisor: int) -> Tuple[int, int]:
    """``size`` rounded up to multiples of ``divisor`` (the export input size)."""
    return tuple(-(-int(s) // divisor) * divisor for s in size)
