#!/usr/bin/env python
"""Speed, memory and real GFLOPs of a Dynamic Routing model on the faithful and fast paths.

Prints one JSON line per measurement (and a header line describing device and setup):

* ``inference``: latency of backbone + decoder (routing record and FLOPs included) on a
  random normalised batch, for the faithful eager fp32 path and each fast mode (see
  ``dyn_seg.benchmark.INFERENCE_MODES``; each adds one optimisation to the previous),
  with real GFLOPs per image, the share of the all-open real FLOPs that the gates shut,
  and agreement with the faithful logits (largest difference, argmax agreement);
* ``train``: training steps per second (forward, losses, backward, SGD step) for the
  faithful path and the training switches (channels_last, bf16 autocast, compile).

All modes run on the same weights and input, interleaved, median of --iters after
--warmup rounds. Without --weights the random network's norms are calibrated on random
batches (--calibrate, as precise BN does), so activations have trained-like scales.
--gates forces input-independent gate patterns (open, or a seeded fraction of paths /
cells closed) to measure budget-model behaviour without trained weights.

Examples::

    python tools/benchmark.py --device cpu --threads 2 --size 256 512 --gates open
    python tools/benchmark.py --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml \\
        --device cuda --size 1024 2048 --gates paths:0.5 --task inference
    python tools/benchmark.py --task train --train-size 768 768 --train-batch 8 \\
        --train-modes faithful channels_last-bf16 compile --device cuda
"""
from __future__ import annotations

import dyn_seg  # noqa: F401  (first: detectron2 and fvcore load without deprecation noise)

# isort: split

import argparse
import json
import sys
from typing import List, Optional

import torch
from detectron2.modeling import build_model

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.benchmark import (
    INFERENCE_MODES,
    TRAINING_MODES,
    benchmark_inference,
    benchmark_training,
    device_name,
    parse_gates,
    prepare_weights,
)
from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.utils.cli import (
    add_size_argument,
    add_weights_and_opts,
    int_at_least,
    parse_tool_args,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", help="dyn_seg config (default: the defaults)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int_at_least(0, "0: keep"), default=0,
                   help="torch CPU threads (0: keep)")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: float32 convolutions and matmuls without TF32 (PyTorch's "
                        "default rounds convolutions to TF32; argmax checks want it off)")
    p.add_argument("--task", choices=["inference", "train", "all"], default="inference")
    add_size_argument(p, default=(1024, 2048), help="inference input size (padded to MAX_STRIDE)")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="inference batch size")
    p.add_argument("--modes", nargs="+", default=["faithful", "fast-base", "fast-fold",
                                                  "fast-fold-cl", "fast-fold-cl-skip", "fast"],
                   choices=list(INFERENCE_MODES), help="inference modes")
    add_size_argument(p, "--train-size", default=(768, 768), help="training input size")
    p.add_argument("--train-batch", type=int_at_least(1), default=8)
    p.add_argument("--train-modes", nargs="+", default=["faithful", "channels_last", "bf16",
                                                        "channels_last-bf16"],
                   choices=list(TRAINING_MODES))
    p.add_argument("--gates", default="natural",
                   help="natural | open | paths:F | cells:F (fraction F forced closed)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, gates and inputs")
    p.add_argument("--calibrate", type=int_at_least(-1, "-1: the default"), default=-1,
                   help="random batches to calibrate norms on (-1: 2 without --weights)")
    p.add_argument("--warmup", type=int_at_least(0), default=2, help="interleaved warm-up rounds")
    p.add_argument("--iters", type=int_at_least(1), default=10, help="interleaved measured rounds")
    add_weights_and_opts(p, "checkpoint to load (default: random init)")
    args = parse_tool_args(p, argv)
    parse_gates(args.gates)  # fail early with the allowed forms
    return args


def setup(args: argparse.Namespace):
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.FAST.ENABLED = False  # the benchmark builds its own inference copies
    cfg.freeze()
    return cfg


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    cfg = setup(args)
    model = build_model(cfg)
    if args.weights:
        DynSegCheckpointer(model).load(args.weights)
    calibrate = args.calibrate if args.calibrate >= 0 else (0 if args.weights else 2)
    device = torch.device(args.device)
    size = tuple(args.size)
    weights = prepare_weights(model, args.gates, args.seed, calibrate,
                              calibration_size=(size[0] // 2, size[1] // 2))
    header = {
        "task": "setup",
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32_convolutions": bool(torch.backends.cudnn.allow_tf32) and device.type == "cuda",
        "config_file": args.config_file or "(defaults)",
        "opts": args.opts,
        "weights": args.weights or "random init",
        **weights,
        "command": " ".join(["python", "tools/benchmark.py"] + (argv or sys.argv[1:])),
    }
    records = [header]
    print(json.dumps(header), flush=True)
    if args.task in ("inference", "all"):
        for r in benchmark_inference(model, args.modes, size, args.batch, args.warmup,
                                     args.iters, args.seed):
            records.append(r)
            print(json.dumps(r), flush=True)
    if args.task in ("train", "all"):
        for r in benchmark_training(model, args.train_modes, tuple(args.train_size),
                                    args.train_batch, args.warmup, args.iters, args.seed):
            records.append(r)
            print(json.dumps(r), flush=True)
    return records


if __name__ == "__main__":
    main()
