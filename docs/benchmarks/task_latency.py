"""Inference latency of a routed model, ``model(inputs)`` in eval mode as built from its
config (``MODEL.FAST.*`` defaults), with gates forced open and with a seeded fraction of
cells or paths forced closed (``dyn_seg.benchmark.patterns``), plus the time of the routed network
inside it (forward hooks on the network module, which fire on every version of the code).

Written against APIs that exist before and after the routed-model contract, so that one
script measures both trees; ``tools/benchmark.py`` does the same for the current tree.
One JSON line per gate setting; the settings are measured interleaved::

    OMP_NUM_THREADS=1 python docs/benchmarks/task_latency.py \\
        --config configs/Synthetic/MaskRCNN-Tiny.yaml --label after
"""
import argparse
import json
import statistics
import subprocess
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--gates", nargs="+", default=["open", "cells:0.5"])
    p.add_argument("--size", nargs=2, type=int, default=[128, 256])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--label", default="")
    a = p.parse_args()
    torch.set_num_threads(1)

    from detectron2.modeling import build_model

    from dyn_seg import get_dyn_seg_cfg
    from dyn_seg.benchmark.patterns import apply_gate_pattern, random_gate_pattern
    from dyn_seg.modeling.meta_arch.routed import find_routed_network

    cfg = get_dyn_seg_cfg(a.config, ["MODEL.DEVICE", "cpu"])
    cfg.freeze()
    models, net_times = {}, {}
    for g in a.gates:
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        net = find_routed_network(model.backbone)
        kind, _, value = g.partition(":")  # open | cells:F | paths:F
        unit = "path" if kind == "paths" else "cell"
        fraction = float(value) if value else 0.0
        apply_gate_pattern(net, random_gate_pattern(net, fraction, unit=unit, seed=0))
        times, start = [], []
        net.register_forward_pre_hook(lambda m, args, s=start: s.append(time.perf_counter()))
        net.register_forward_hook(
            lambda m, args, out, s=start, t=times: t.append(time.perf_counter() - s.pop()))
        models[g], net_times[g] = model, times
    image = torch.rand(3, *a.size, generator=torch.Generator().manual_seed(1)) * 255
    inputs = [{"image": image, "height": a.size[0], "width": a.size[1]}]
    times = {g: [] for g in models}
    with torch.no_grad():
        flops = {g: m(inputs)[0]["flops"] for g, m in models.items()}
        for _ in range(a.warmup):
            for m in models.values():
                m(inputs)
        for t in net_times.values():
            t.clear()
        for _ in range(a.iters):
            for g, m in models.items():
                start = time.perf_counter()
                m(inputs)
                times[g].append(time.perf_counter() - start)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for g in models:
        print(json.dumps({
            "label": a.label, "commit": commit, "config": a.config, "gates": g,
            "size": a.size, "threads": 1, "iters": a.iters,
            "median_ms": statistics.median(times[g]) * 1e3, "min_ms": min(times[g]) * 1e3,
            # the semantic segmentor calls forward_with_routing itself: no network time
            "network_median_ms": statistics.median(net_times[g]) * 1e3 if net_times[g]
            else None,
            "network_min_ms": min(net_times[g]) * 1e3 if net_times[g] else None,
            "real_gflops": flops[g]["real"], "backbone_gflops": flops[g]["backbone"],
        }), flush=True)


if __name__ == "__main__":
    main()
