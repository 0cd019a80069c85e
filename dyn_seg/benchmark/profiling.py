"""A short profile of each inference mode (``--task profile``): how busy the device is
and which kernels take its time.

``torch.profiler`` records ``calls`` calls of a mode (after the benchmark's warm-up call).
On CUDA the record gives the wall time per call, the device's busy share (the union of
the intervals in which a kernel, copy or memset ran, over the wall time: what is not busy
is the device waiting for the host) and the kernels with the most device time. On a CPU
there is no separate device: the busy share is left out and the top entries are the ATen
operators and generated kernels with the most self CPU time.
"""
from __future__ import annotations

import time
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .harness import _sync, build_inference, random_images

__all__ = ["busy_share", "profile_inference"]

TOP_KERNELS = 8


def busy_share(intervals: Sequence[Tuple[float, float]], wall: float) -> float:
    """Length of the union of ``(start, end)`` intervals over ``wall`` (same unit)."""
    busy, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        busy += e - max(s, end)
        end = e
    return busy / wall if wall > 0 else 0.0


def _device_events(prof) -> List:
    """The device's own activities (kernels, copies, memsets) of a CUDA profile."""
    return [e for e in prof.profiler.kineto_results.events()
            if e.device_type() == torch.autograd.DeviceType.CUDA and e.name() != "[memory]"]


def profile_inference(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                      batch: int = 1, calls: int = 3, seed: int = 0) -> List[dict]:
    """One record per mode: wall ms per call under the profiler, device busy share (CUDA)
    and the top kernels (CUDA: device time; CPU: self CPU time), per call."""
    from torch.profiler import ProfilerActivity, profile

    device = model.pixel_mean.device
    images = random_images(batch, size, device, seed)
    built = build_inference(model, modes, images)
    for mode in built:
        mode.run()  # initialisation, compilation, capture
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    records = []
    for mode in built:
        mode.run()
        _sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(calls):
                mode.run()
            _sync(device)
            wall = time.perf_counter() - start
        record = {"task": "profile", "mode": mode.name, "size": list(size), "batch": batch,
                  "calls": calls, "wall_ms_per_call": wall / calls * 1e3}
        averages = prof.key_averages()
        if device.type == "cuda":
            events = _device_events(prof)
            intervals = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events]
            record["device_busy_share"] = busy_share(intervals, wall * 1e9)
            record["device_ms_per_call"] = sum(e.duration_ns() for e in events) / 1e6 / calls
            record["device_kernels_per_call"] = len(events) / calls
            rows = sorted((a for a in averages if _device_time(a) > 0),
                          key=_device_time, reverse=True)
            record["top_kernels"] = [
                {"name": a.key[:80], "ms_per_call": _device_time(a) / 1e3 / calls,
                 "calls_per_call": a.count / calls} for a in rows[:TOP_KERNELS]]
        else:
            rows = sorted((a for a in averages if not a.key.startswith("ProfilerStep")),
                          key=lambda a: a.self_cpu_time_total, reverse=True)
            record["top_kernels"] = [
                {"name": a.key[:80], "ms_per_call": a.self_cpu_time_total / 1e3 / calls,
                 "calls_per_call": a.count / calls} for a in rows[:TOP_KERNELS]]
        records.append(record)
    return records


def _device_time(avg) -> float:
    """Self device time (µs) of a profiler average, across torch versions."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(avg, attr, None)
        if value is not None:
            return float(value)
    return 0.0
