"""Measurements behind ``tools/benchmark.py``: latency, throughput, memory, real GFLOPs.

A semantic segmentor is measured as network + decoder on a normalised batch (its
inference copy holds both), with the agreement of each mode's logits with the faithful
path. Other routed models (panoptic, instance, classification) are measured end to end,
``model(inputs)`` in eval mode with each mode's ``fast_inference``, plus the time of the
routed network inside it; training is measured for semantic segmentors only.

Every mode is measured side by side on the same weights and input: the runs of all modes
are interleaved (one run of each, repeated), so that load on the machine affects them
alike, and the median after warm-up is reported. Inference modes add their agreement with
the faithful eager path (largest absolute logit difference, share of equal argmax).

Every mode is measured side by side on the same weights and input: the runs of all modes
are interleaved (one run of each, repeated), so that load on the machine affects them
alike, and the median after warm-up is reported. Inference modes add their agreement with
the faithful eager path (largest absolute logit difference, share of equal argmax).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from dyn_seg.modeling.meta_arch.analysis import all_open_flops
from dyn_seg.modeling.meta_arch.routed import routed_model
from dyn_seg.modeling.meta_arch.semantic import DynamicSemanticSegmentor
from dyn_seg.modeling.meta_arch.training import prepare_for_training
from dyn_seg.modeling.network.transforms import (
    FastInference,
    InferenceCopy,
    InferenceOptions,
)

from .modes import (
    INFERENCE_MODE_SPECS,
    TRAINING_MODE_SPECS,
    UnavailableMode,
    available,
    resolve,
)
from .patterns import apply_gate_pattern, calibrate_batch_norm, random_gate_pattern

__all__ = [
    "INFERENCE_MODES",
    "TRAINING_MODES",
    "all_open_real_gflops",
    "benchmark_inference",
    "benchmark_model_inference",
    "benchmark_training",
    "build_inference",
    "device_name",
    "parse_gates",
    "peak_memory",
    "prepare_weights",
    "random_images",
]

# name -> ModeSpec (dyn_seg.benchmark.modes): every mode, available in this version or not
INFERENCE_MODES = INFERENCE_MODE_SPECS
TRAINING_MODES = TRAINING_MODE_SPECS
GIGA_PER_MEGA = 1e-3


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_gates(spec: str) -> Tuple[str, float]:
    """``natural`` | ``open`` | ``paths:F`` | ``cells:F`` -> (kind, closed fraction)."""
    if spec in ("natural", "open"):
        return spec, 0.0
    kind, _, value = spec.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if kind not in ("paths", "cells") or not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"--gates {spec!r} is not allowed: use natural (the weights' own gates), open "
            "(every path forced open), paths:F or cells:F (a fraction F in [0, 1] of the "
            "routed cells' paths, or of whole cells, forced closed), e.g. paths:0.5."
        )
    return kind, fraction


def prepare_weights(model: nn.Module, gates: str, seed: int, calibrate: int,
                    calibration_size: Tuple[int, int]) -> dict:
    """Force a gate pattern, then calibrate norms on ``calibrate`` random batches (0: keep
    the norms), so that their statistics match the routing being measured.

    Returns a description for the benchmark record.
    """
    kind, fraction = parse_gates(gates)
    routed = routed_model(model)
    network = routed.routed_network
    info = {"gates": gates, "gate_seed": seed, "calibrated_batches": calibrate}
    if kind != "natural":
        unit = "cell" if kind == "cells" else "path"
        pattern = random_gate_pattern(network, fraction, unit=unit, seed=seed)
        apply_gate_pattern(network, pattern)
        info["closed_paths"] = pattern.num_closed()
    if calibrate:
        device = next(network.parameters()).device
        g = torch.Generator().manual_seed(seed)
        batches = [(torch.randn(2, 3, *calibration_size, generator=g) * 50).to(device)
                   for _ in range(calibrate)]
        if _is_segmentor(model):
            def run(b):
                return model.sem_seg_head.stride4_logits(model.backbone(b))
        else:  # detectron2's heads compute losses in training mode: the network's norms only
            run = network
            info["calibrated"] = "routed network only"
        calibrate_batch_norm(model, run, batches)
    return info


def _is_segmentor(model: nn.Module) -> bool:
    """Whether ``model`` is measured as network + decoder (see the module docstring)."""
    return isinstance(model, DynamicSemanticSegmentor)


def all_open_real_gflops(model: nn.Module, size: Tuple[int, int]) -> float:
    """Real GFLOPs of one image at ``size`` with every path open (cells + stem + head)."""
    return all_open_flops(model, tuple(size))["real"] * GIGA_PER_MEGA


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict:
    """Peak memory of one call of ``fn``, relative to before the call.

    CUDA: the caching allocator's peak (``peak_memory_mb``). CPU: torch has no CPU memory
    statistics, so the call runs under ``torch.profiler`` with ``profile_memory=True`` and
    the largest sum of tensor bytes allocated minus freed through torch's CPU allocator
    during the call is reported (``tensor_peak_mb``; Python objects excluded; tensors made
    before the call and freed in it are not subtracted, the profiler sees no size for
    them, so this is an upper bound of what the call itself needs), beside the process's
    peak resident set
    (``process_peak_rss_mb``, ``ru_maxrss``: whole process, never decreases, so it is only
    an upper bound for the first mode measured).
    """
    out: dict = {}
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_memory_above_start_mb"] = (torch.cuda.max_memory_allocated(device)
                                             - base) / 2**20
        return out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]"), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if e.device_type() == torch.autograd.DeviceType.CPU:
            current += e.nbytes()
            peak = max(peak, current)
    out["tensor_peak_mb"] = peak / 2**20
    out["memory_method"] = "torch.profiler CPU allocator events (tensor bytes)"
    out["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _interleaved(runs: Dict[str, Callable[[], object]], warmup: int, iters: int,
                 device: torch.device) -> Dict[str, List[float]]:
    """Seconds per call of every function, measured in interleaved rounds after warm-up
    (a progress bar on stderr when it is a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=warmup + iters, desc="benchmark rounds", unit="round", disable=None)
    for _ in range(warmup):
        for fn in runs.values():
            fn()
        bar.update()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(iters):
        bar.update()
        for name, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    bar.close()
    return times


def _stats(seconds: Sequence[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "min_ms": ordered[0] * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "runs": len(ordered),
    }


# public names for the other benchmarks of this package (dyn_seg.benchmark.deploy)
time_interleaved = _interleaved
latency_stats = _stats


@dataclass
class _InferenceMode:
    name: str
    options: Optional[InferenceOptions]
    run: Callable[[], tuple]
    build_s: float
    bridge: str = ""


def _faithful_inference(model: nn.Module, images: torch.Tensor) -> Callable[[], tuple]:
    def run():
        with torch.no_grad():
            features, routing = model.backbone.forward_with_routing(images)
            logits, _ = model.sem_seg_head(features, present=routing.feature_present)
        return logits, features, routing

    return run


def _check_modes(kind: str, modes: Sequence[str], device: torch.device) -> None:
    """Unknown or unavailable modes: one error naming each and why."""
    table = INFERENCE_MODES if kind == "inference" else TRAINING_MODES
    unknown = [m for m in modes if m not in table]
    if unknown:
        label = "inference" if kind == "inference" else "training"
        raise ValueError(f"Unknown {label} modes {unknown}; known: {list(table)}.")
    _, missing = available(kind, modes, device)
    if missing:
        raise UnavailableMode("; ".join(missing.values()) + " (tools/benchmark.py "
                              "--skip-unavailable measures the others)")


def random_images(batch: int, size: Tuple[int, int], device: torch.device, seed: int
                  ) -> torch.Tensor:
    """The benchmark's normalised input batch (``batch``, 3, *size)."""
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.randn(batch, 3, *size, generator=g) * 50).to(device)


def build_inference(model: nn.Module, modes: Sequence[str], images: torch.Tensor
                    ) -> List[_InferenceMode]:
    """One runnable per mode (faithful: the model's modules; others: an inference copy)."""
    device = images.device
    _check_modes("inference", modes, device)
    model.eval()
    built: List[_InferenceMode] = []
    for name in modes:
        mode = resolve("inference", name, device)
        start = time.perf_counter()
        if mode.options is None:
            run = _faithful_inference(model, images)
        else:
            copy_ = InferenceCopy(model, mode.options)
            if mode.adapt is not None:
                mode.adapt(copy_)
            run = functools.partial(copy_, images)
        built.append(_InferenceMode(name, mode.options, run, time.perf_counter() - start,
                                    mode.bridge))
    return built


def benchmark_inference(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                        batch: int, warmup: int, iters: int, seed: int = 0) -> List[dict]:
    """One record per mode: latency of backbone + decoder (with the routing record and its
    FLOPs) on a random normalised batch (``batch``, 3, *size), real GFLOPs per image,
    agreement with the faithful path, first-call time (compilation, capture) and peak
    memory of a later call (:func:`peak_memory`)."""
    if not _is_segmentor(model):
        return benchmark_model_inference(model, modes, size, batch, warmup, iters, seed)
    device = model.pixel_mean.device
    images = random_images(batch, size, device, seed)
    built = build_inference(model, modes, images)

    reference = _faithful_inference(model, images)()[0]
    all_open = all_open_real_gflops(model, model.backbone.counting_size(images))
    outputs, memory = {}, {}
    for mode in built:  # first call: outputs and (with compile / capture) the compilation
        start = time.perf_counter()
        outputs[mode.name] = mode.run()
        _sync(device)
        first = time.perf_counter() - start
        memory[mode.name] = {"first_call_s": first, **peak_memory(mode.run, device)}
    times = _interleaved({m.name: m.run for m in built}, warmup, iters, device)

    records = []
    base = statistics.median(times["faithful"]) if "faithful" in times else None
    for mode in built:
        logits, features, routing = outputs[mode.name]
        real = model.image_flops(routing, images.shape, [{}] * batch)[0]
        real_gflops = float(real.mean()) * GIGA_PER_MEGA
        record = {
            "task": "inference",
            "mode": mode.name,
            "size": list(size),
            "batch": batch,
            **_stats(times[mode.name]),
            "images_per_s": batch / statistics.median(times[mode.name]),
            "real_gflops": real_gflops,
            "all_open_real_gflops": all_open,
            "shut_real_flops_share": 1.0 - real_gflops / all_open,
            "max_abs_logit": float(reference.abs().max()),
            "max_abs_diff": float((logits.float() - reference).abs().max()),
            **_argmax_agreement(logits.float(), reference),
            "build_s": mode.build_s,
            **memory[mode.name],
            "options": mode.options.describe() if mode.options is not None else None,
            **({"bridge": mode.bridge} if mode.bridge else {}),
        }
        if base is not None:
            record["speedup_vs_faithful"] = base / statistics.median(times[mode.name])
        records.append(record)
    return records


def benchmark_model_inference(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                              batch: int, warmup: int, iters: int, seed: int = 0
                              ) -> List[dict]:
    """One record per mode for any routed model: latency of ``model(inputs)`` in eval mode
    (``batch`` random uint8 images of ``size``) with the mode's ``fast_inference``, the time
    of the routed network inside it, and the real / backbone GFLOPs the model reports."""
    routed = routed_model(model)
    network = routed.routed_network
    device = next(network.parameters()).device
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    inputs = [{"image": (torch.rand(3, *size, generator=g) * 255).to(torch.uint8).to(device),
               "height": size[0], "width": size[1]} for _ in range(batch)]
    saved = routed.fast_inference
    network_times: List[float] = []
    started: List[float] = []
    handles = [
        network.register_forward_pre_hook(lambda m, a: started.append(time.perf_counter())),
        network.register_forward_hook(
            lambda m, a, o: network_times.append(time.perf_counter() - started.pop())),
    ]
    resolved = {name: resolve("inference", name, device) for name in modes}
    engines = {name: (None if mode.options is None else FastInference(mode.options))
               for name, mode in resolved.items()}

    def runner(engine):
        def run():
            routed.fast_inference = engine
            with torch.no_grad():
                return model(inputs)
        return run

    runs = {name: runner(engine) for name, engine in engines.items()}
    try:
        outputs, memory, network_ms = {}, {}, {}
        for name, run in runs.items():  # first call: builds the inference copy
            start = time.perf_counter()
            outputs[name] = run()
            _sync(device)
            memory[name] = {"first_call_s": time.perf_counter() - start,
                            **peak_memory(run, device)}
        per_mode = {name: [] for name in runs}

        def timed(name, run):
            def call():
                del network_times[:]
                run()
                per_mode[name].append(sum(network_times))
            return call

        times = _interleaved({n: timed(n, r) for n, r in runs.items()}, warmup, iters, device)
        for name in runs:
            network_ms[name] = statistics.median(per_mode[name][-iters:]) * 1e3
    finally:
        routed.fast_inference = saved
        for h in handles:
            h.remove()
    counting = routed.counting_size(routed.network_input(inputs).shape)
    open_flops = all_open_flops(model, counting)
    open_backbone = (open_flops["expected"] + open_flops["gates"] + open_flops["stem"]) * 1e-3
    base = statistics.median(times["faithful"]) if "faithful" in times else None
    records = []
    for name in modes:
        flops = [o["flops"] for o in outputs[name]]
        backbone = statistics.mean(f["backbone"] for f in flops)
        med = statistics.median(times[name])
        record = {
            "task": "inference",
            "meta_architecture": type(model).__name__,
            "mode": name,
            "execution_plan": "faithful" if engines[name] is None
            else "fast: " + engines[name].describe(),
            "size": list(size),
            "batch": batch,
            **_stats(times[name]),
            "images_per_s": batch / med,
            "network_median_ms": network_ms[name],
            "real_gflops": statistics.mean(f["real"] for f in flops),
            "backbone_gflops": backbone,
            "all_open_backbone_gflops": open_backbone,
            "shut_backbone_flops_share": 1.0 - backbone / open_backbone,
            **memory[name],
            "options": None if engines[name] is None else engines[name].options.describe(),
        }
        if base is not None:
            record["speedup_vs_faithful"] = base / med
        records.append(record)
    return records


def _argmax_agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """Share of pixels with the faithful path's class, how many differ, and the largest
    faithful top-2 logit margin among those that differ (a margin far below the logits'
    difference means the pixel is a tie, decided by rounding)."""
    differ = logits.argmax(1) != reference.argmax(1)
    top2 = reference.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1])[differ]
    return {
        "argmax_agreement": 1.0 - float(differ.float().mean()),
        "argmax_differing_pixels": int(differ.sum()),
        "argmax_differing_max_margin": float(margin.max()) if margin.numel() else 0.0,
    }


def _training_batch(size: Tuple[int, int], batch: int, classes: int, device: torch.device,
                    seed: int) -> List[dict]:
    g = torch.Generator().manual_seed(seed + 2)
    return [
        {
            "image": (torch.rand(3, *size, generator=g) * 255).to(device),
            "sem_seg": torch.randint(0, classes, tuple(size), generator=g).to(device),
        }
        for _ in range(batch)
    ]


def _training_step(model: nn.Module, name: str, data: List[dict]) -> Callable[[], object]:
    """One training step of mode ``name`` on its own copy of ``model``: forward, losses,
    backward, SGD step."""
    device = model.pixel_mean.device
    mode = resolve("train", name, device)
    options, bf16 = mode.options, mode.bf16
    replica = prepare_for_training(copy.deepcopy(model).train(), options)
    if mode.adapt is not None:
        mode.adapt(replica)
    replica.step_rate = 0.5
    optimizer = torch.optim.SGD(replica.parameters(), lr=1e-6, momentum=0.9)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = replica(data)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    step.replica = replica
    step.replica_options = dataclasses.asdict(options)
    step.bridge = mode.bridge
    step.bf16 = bf16
    return step


def benchmark_training(model: nn.Module, modes: Sequence[str], size: Tuple[int, int],
                       batch: int, warmup: int, iters: int, seed: int = 0) -> List[dict]:
    """One record per mode: seconds per training step (forward, losses, backward, SGD step)
    on a random batch, images per second, first-step time (compilation) and peak memory of
    a later step (:func:`peak_memory`). Each mode trains its own copy."""
    if not _is_segmentor(model):
        raise ValueError(
            f"--task train measures semantic segmentors only; {type(model).__name__} needs "
            "its task's targets: use --task inference (or train it with train_net.py)."
        )
    device = model.pixel_mean.device
    _check_modes("train", modes, device)
    classes = model.sem_seg_head.predictor.out_channels
    data = _training_batch(size, batch, classes, device, seed)
    steps, memory = {}, {}
    for name in modes:
        step = _training_step(model, name, data)
        start = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - start
        steps[name], memory[name] = step, {"first_call_s": first, **peak_memory(step, device)}
    times = _interleaved(steps, warmup, iters, device)
    base = statistics.median(times["faithful"]) if "faithful" in times else None
    records = []
    for name in modes:
        med = statistics.median(times[name])
        record = {
            "task": "train",
            "mode": name,
            "size": list(size),
            "batch": batch,
            **_stats(times[name]),
            "images_per_s": batch / med,
            **memory[name],
            "options": {**steps[name].replica_options, "bf16_autocast": steps[name].bf16},
            **({"bridge": steps[name].bridge} if steps[name].bridge else {}),
        }
        if base is not None:
            record["speedup_vs_faithful"] = base / med
        records.append(record)
    return records
