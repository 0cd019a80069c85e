"""Operators and host reads per forward, for every execution plan (``--task count``).

What a forward asks of the machine does not depend on the input size (only on the
network, the routing and the plan), so it can be counted at a small input on any device.
Each mode is called once first (lazy initialisation, compilation, CUDA-graph capture are
not what is counted), then one call is counted: eager modes with the dispatch counter
(:func:`~dyn_seg.benchmark.counting.count_dispatch`), compiled or captured modes with the
profiler (:func:`~dyn_seg.benchmark.counting.profile_count`), which the record names
(``count_method``). On CUDA every mode is also profiled, for the kernel launches and
synchronisations the CUDA runtime saw.

Training counts one forward (losses included) and backward of a training copy, without
the optimizer step.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from .counting import DispatchCount, count_dispatch, profile_count
from .harness import _check_modes, _training_batch, _training_step, build_inference, random_images
from .modes import is_compiled, resolve

__all__ = ["count_inference", "count_training"]

TOP_OPS = 8


def _inductor_kernel_profile():
    """Inductor's CPU kernels call the profiler only when compiled with this switch (the
    counted call then sees them); a no-op context where the config lacks it."""
    import contextlib

    try:
        from torch._inductor import config
    except ImportError:  # pragma: no cover - torch without inductor
        return contextlib.nullcontext()
    if not hasattr(config, "cpp") or not hasattr(config.cpp, "enable_kernel_profile"):
        return contextlib.nullcontext()
    return config.patch({"cpp.enable_kernel_profile": True})


def _count(fn: Callable[[], object], compiled: bool, device: torch.device
           ) -> Tuple[DispatchCount, dict]:
    """The count of one call of ``fn`` and, on CUDA, the profiler's CUDA figures."""
    if compiled:
        _, record = profile_count(fn)
        return record, {}
    _, record = count_dispatch(fn)
    cuda = {}
    if device.type == "cuda":
        _, profiled = profile_count(fn)
        cuda = {k: v for k, v in profiled.extra.items() if k.startswith("cuda_")}
    return record, cuda


def _record(kind: str, name: str, size, batch: int, record: DispatchCount, cuda: dict,
            about: dict) -> dict:
    return {"task": "count", "pass": kind, "mode": name, "size": list(size), "batch": batch,
            **record.as_dict(), **cuda, "top_ops": record.top(TOP_OPS), **about}


def count_inference(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                    batch: int = 1, seed: int = 0) -> List[dict]:
    """One record per inference mode: ``kernels`` (operators that run a kernel) and
    ``host_reads`` of one forward (backbone + decoder, routing record included), with the
    operators that read (``host_read_ops``) and the most frequent operators."""
    device = model.pixel_mean.device
    images = random_images(batch, size, device, seed)
    with _inductor_kernel_profile():
        built = build_inference(model, modes, images)
        for mode in built:
            mode.run()  # initialisation, compilation, capture
    records = []
    for mode in built:
        record, cuda = _count(mode.run, is_compiled(mode.options), device)
        records.append(_record("inference", mode.name, size, batch, record, cuda, {
            "options": mode.options.describe() if mode.options is not None else None,
            **({"bridge": mode.bridge} if mode.bridge else {})}))
    return records


def count_training(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                   batch: int = 2, seed: int = 0) -> List[dict]:
    """One record per training mode: operators and host reads of one forward (losses
    included) and backward, after one full step of warm-up."""
    device = model.pixel_mean.device
    _check_modes("train", modes, device)
    classes = model.sem_seg_head.predictor.out_channels
    data = _training_batch(size, batch, classes, device, seed)
    records = []
    for name in modes:
        options = resolve("train", name, device).options
        with _inductor_kernel_profile():
            step = _training_step(model, name, data)
            step()  # initialisation, compilation
        replica, bf16 = step.replica, step.bf16

        def forward_backward(replica=replica, bf16=bf16):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = replica(data)
            sum(losses.values()).backward()
            replica.zero_grad(set_to_none=True)

        record, cuda = _count(forward_backward, is_compiled(options), device)
        records.append(_record("train", name, size, batch, record, cuda, {
            "options": {**step.replica_options, "bf16_autocast": bf16},
            **({"bridge": step.bridge} if step.bridge else {})}))
    return records
