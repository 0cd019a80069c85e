"""Guards for code that must not be captured by tracing, scripting or ``torch.export``.

Some inference paths decide routes on the host (the fast plan reads the gates back and
plans sub-batches in Python) or read data pointers (the inference-copy cache key). A
trace or an export of them would freeze the sample's routes into the graph, or fail deep
inside torch with a data-dependent error. :func:`forbid_capture` turns that into one
clear error that names the supported export route; the graph plan (device-side routing)
is what gets exported.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["EXPORT_COMMAND", "allow_capture", "capture_kind", "forbid_capture"]

EXPORT_COMMAND = (
    "python tools/export_model.py --config-file CONFIG --format {onnx,pt2,torchscript} "
    "--export-method {onnx-dynamo,torch-export,tracing} --output DIR (docs/DEPLOY.md)"
)


def capture_kind() -> Optional[str]:
    """"traced", "scripted" or "exported" while torch captures the running code, else None.

    ``torch.compile`` without export is not a capture here: it runs host-side code
    correctly (graph breaks), so it stays allowed.
    """
    if torch.jit.is_scripting():
        return "scripted"
    if torch.jit.is_tracing():
        return "traced"
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    if is_exporting is not None and is_exporting():
        return "exported"
    return None


_allowed = [0]  # depth of allow_capture() blocks


@contextlib.contextmanager
def allow_capture() -> Iterator[None]:
    """Capture host-side routing on purpose inside this block: a trace that is run once and
    never reused, e.g. fvcore's FLOP count of one forward pass (the route it freezes is the
    one it counts)."""
    _allowed[0] += 1
    try:
        yield
    finally:
        _allowed[0] -= 1


def forbid_capture(what: str, kind: Optional[str] = None) -> None:
    """Raise a RuntimeError when ``what`` (a host-side routing step) is being captured.

    ``kind`` overrides the detection (e.g. "scripted" from ``__prepare_scriptable__``).
    """
    kind = kind or capture_kind()
    if kind is None or (_allowed[0] and kind == "traced"):
        return
    raise RuntimeError(
        f"{what} cannot be {kind}: it decides routes on the host (or reads data pointers), "
        "so a captured graph would freeze the sample image's routing or fail. Export the "
        "device-routed graph plan instead: "
        f"{EXPORT_COMMAND}, or dyn_seg.export.ExportableSegmentor in Python."
    )
