"""Latency of exported models (ONNX Runtime, ``.pt2``) against the eager fast plan.

``tools/benchmark.py --task deploy``: for each gate pattern, the same weights are exported
(conditional ``.pt2`` and ``.onnx`` from one ``torch.export``; the dense ``.onnx``) and
timed interleaved with the eager fast plan and the eager conditional graph plan on one
random image batch, with each mode's real GFLOPs per image and its agreement with the
fast plan's logits. ONNX Runtime runs on the CPU provider with as many threads as torch.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from dyn_seg.export import ExportableSegmentor
from dyn_seg.export.exporters import export, export_program
from dyn_seg.export.runtime import load_exported
from dyn_seg.modeling import InferenceCopy

from .harness import (
    GIGA_PER_MEGA,
    all_open_real_gflops,
    latency_stats,
    prepare_weights,
    time_interleaved,
)

__all__ = ["DEPLOY_MODES", "benchmark_deploy"]

DEPLOY_MODES = ("eager-fast", "eager-graph-conditional", "pt2-conditional",
                "onnxruntime-conditional", "onnxruntime-dense")


def _agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    scale = float(np.abs(reference).max())
    return {
        "max_abs_logit": scale,
        "max_rel_diff": float(np.abs(logits - reference).max()) / max(scale, 1e-12),
        "argmax_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
    }


def _pattern_records(model: nn.Module, gates: str, size: Tuple[int, int], batch: int,
                     warmup: int, iters: int, seed: int, calibrate: int, workdir: str,
                     threads: int) -> List[dict]:
    info = prepare_weights(model, gates, seed, calibrate,
                           calibration_size=(size[0] // 2, size[1] // 2))
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(batch, 3, *size, generator=g) * 255  # model input format (BGR)
    normalised = (images - model.pixel_mean) / model.pixel_std
    folder = os.path.join(workdir, gates.replace(":", "-"))
    build: Dict[str, float] = {}

    start = time.perf_counter()
    fast = InferenceCopy(model)  # MODEL.FAST defaults: the fast plan
    build["eager-fast"] = time.perf_counter() - start
    conditional = ExportableSegmentor(model, "conditional")
    dense = ExportableSegmentor(model, "dense")
    start = time.perf_counter()
    program = export_program(conditional, images)
    build["torch_export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pt2 = export(conditional, images, "pt2", "torch-export", os.path.join(folder, "pt2"),
                 program=program)
    build["pt2-conditional"] = time.perf_counter() - start + build["torch_export_s"]
    start = time.perf_counter()
    onnx_c = export(conditional, images, "onnx", "onnx-dynamo", os.path.join(folder, "onnx-c"),
                    program=program)
    build["onnxruntime-conditional"] = time.perf_counter() - start + build["torch_export_s"]
    start = time.perf_counter()
    onnx_d = export(dense, images, "onnx", "onnx-dynamo", os.path.join(folder, "onnx-d"))
    build["onnxruntime-dense"] = time.perf_counter() - start

    runners = {
        "pt2-conditional": load_exported(pt2.path),
        "onnxruntime-conditional": load_exported(onnx_c.path, threads=threads),
        "onnxruntime-dense": load_exported(onnx_d.path, threads=threads),
    }
    x = images.numpy()

    def eager(module):
        def run():
            with torch.no_grad():
                return module(images)
        return run

    runs = {
        "eager-fast": lambda: fast(normalised),
        "eager-graph-conditional": eager(conditional),
        **{name: (lambda r=r: r(x)) for name, r in runners.items()},
    }
    first = {name: fn() for name, fn in runs.items()}
    reference = first["eager-fast"][0].numpy()
    real_fast = model.image_flops(first["eager-fast"][2], normalised)[0]
    times = time_interleaved(runs, warmup, iters, torch.device("cpu"))
    all_open = all_open_real_gflops(model, model.backbone.counting_size(normalised))
    base = statistics.median(times["eager-fast"])
    records = []
    for name in runs:
        out = first[name]
        if name == "eager-fast":
            logits, gflops = reference, float(real_fast.mean()) * GIGA_PER_MEGA
        else:
            logits = np.asarray(out["sem_seg"])
            gflops = float(np.asarray(out["gflops"]).mean())
        records.append({
            "task": "deploy",
            "mode": name,
            **info,
            "size": list(size),
            "batch": batch,
            **latency_stats(times[name]),
            "speedup_vs_eager_fast": base / statistics.median(times[name]),
            "real_gflops": gflops,
            "all_open_real_gflops": all_open,
            "shut_real_flops_share": 1.0 - gflops / all_open,
            **_agreement(logits, reference),
            "build_s": build.get(name, 0.0),
            "file_mb": (os.path.getsize(runners[name].path) / 2**20
                        if name in runners else None),
        })
    return records


def benchmark_deploy(model: nn.Module, gates: Sequence[str], size: Tuple[int, int],
                     batch: int, warmup: int, iters: int, seed: int, calibrate: int,
                     workdir: str, threads: int) -> List[dict]:
    """Records of :data:`DEPLOY_MODES` for every gate pattern in ``gates`` (each starts
    from ``model``'s weights as given; ``model`` itself is left unchanged)."""
    records = []
    for spec in gates:
        records += _pattern_records(copy.deepcopy(model), spec, size, batch, warmup, iters,
                                    seed, calibrate, workdir, threads)
    return records
