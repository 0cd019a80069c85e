"""Run an exported model: ``.onnx`` in ONNX Runtime, ``.pt2`` and ``.ts`` with plain torch.

:func:`load_exported` returns an :class:`ExportedRunner`: called on an (N, 3, H, W) float32
BGR image batch (numpy) at the export size, it returns ``{"sem_seg", "gates", "gflops"}``
as numpy arrays, whatever the format. :func:`prepare_image` brings an image file (or a
generated street scene) to that size. :func:`executed_nodes` reads an ONNX Runtime profile
(which nodes ran, inside ``If`` branches too).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from .exporters import metadata_path

__all__ = ["ExportedRunner", "executed_nodes", "load_exported", "prepare_image",
           "summarize"]


class ExportedRunner:
    """An exported model and its ``model.json``; ``runner(images)`` -> dict of arrays."""

    def __init__(self, path: str, metadata: Dict, run, session=None):
        self.path = path
        self.metadata = metadata
        self._run = run
        self.session = session  # the ONNX Runtime session (None for torch formats)

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.metadata["input_shape"][-2:])

    def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = tuple(self.metadata["input_shape"][1:])
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{self.path} was exported for images of shape (N, {', '.join(map(str, expected))})"
                f", got {tuple(images.shape)}; resize with dyn_seg.export.prepare_image or "
                "export again at this size (tools/export_model.py --size H W)."
            )
        return dict(zip(self.metadata["outputs"], self._run(images)))


def _read_metadata(path: str) -> Dict:
    meta = metadata_path(path)
    if not os.path.isfile(meta):
        raise FileNotFoundError(
            f"{meta} is missing: tools/export_model.py writes it beside the model (input size, "
            "output names); export again, or copy it along with the model file."
        )
    with open(meta) as f:
        return json.load(f)


def load_exported(path: str, profile_prefix: Optional[str] = None,
                  optimize: bool = True, threads: int = 0) -> ExportedRunner:
    """Load ``path`` (.onnx, .pt2 or .ts) with its ``model.json``.

    ONNX: an ONNX Runtime session on the CPU provider; ``profile_prefix`` turns on its
    profiler (:meth:`onnxruntime.InferenceSession.end_profiling` writes the JSON),
    ``optimize`` False disables its graph rewrites (one profiled node per exported node),
    ``threads`` > 0 sets its intra-op threads (0: ONNX Runtime's default).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No exported model at {path}; write one with "
                                "tools/export_model.py.")
    metadata = _read_metadata(path)
    suffix = os.path.splitext(path)[1]
    if suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "Running .onnx models needs onnxruntime: pip install -e \".[deploy]\"") from e
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only (not its notes on unused initializers)
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return ExportedRunner(path, metadata, lambda x: session.run(None, {name: x}), session)

    import torch

    if suffix == ".pt2":
        module = torch.export.load(path).module()
    elif suffix == ".ts":
        module = torch.jit.load(path)
    else:
        raise ValueError(f"{path}: unknown model format {suffix!r}; use .onnx, .pt2 or .ts.")

    def run(x: np.ndarray) -> List[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        if isinstance(out, dict):
            out = [out[k] for k in metadata["outputs"]]
        return [t.numpy() for t in out]

    return ExportedRunner(path, metadata, run)


def prepare_image(path: Optional[str], size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (3, H, W) float32 BGR image at ``size``: ``path`` read and resized, or (``path``
    None) a generated street scene (dyn_seg's synthetic painter)."""
    import cv2

    h, w = size
    if path:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"Cannot read image {path!r} (missing or not an image).")
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        from dyn_seg.synthetic import render_scene

        rgb = render_scene(np.random.default_rng(seed), h, w)[0]
        image = rgb[:, :, ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def summarize(outputs: Dict[str, np.ndarray], columns: Sequence[Sequence]) -> List[Dict]:
    """Per image: real GFLOPs (the graph's ``gflops`` output, computed from its gates),
    open gates among the routed cells' paths (activation above 0) and the classes seen."""
    gates = outputs["gates"]
    routed = [k for k, c in enumerate(columns) if c[0] >= 0]  # layer -1: the init cell
    rows = []
    for i in range(gates.shape[0]):
        labels = outputs["sem_seg"][i].argmax(axis=0)
        classes, counts = np.unique(labels, return_counts=True)
        rows.append({
            "image": i,
            "gflops": round(float(outputs["gflops"][i]), 6),
            "open_paths": int((gates[i, routed] > 0).sum()),
            "paths": len(routed),
            "classes": {int(c): int(n) for c, n in zip(classes, counts)},
        })
    return rows


def executed_nodes(profile_path: str) -> List[Tuple[str, str]]:
    """``(node name, op type)`` of every node run, in the order of an ONNX Runtime profile
    (``enable_profiling``); nodes inside ``If`` branches appear only when their branch ran."""
    with open(profile_path) as f:
        events = json.load(f)
    out = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            out.append((e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "")))
    return out


def count_ops(nodes: Sequence[Tuple[str, str]], op_types: Set[str]) -> int:
    return sum(1 for _, op in nodes if op in op_types)
