"""Speed, memory, operator counts and real GFLOPs of a Dynamic Routing model's plans.

Prints one JSON line per measurement (and a header line describing device and setup):

* ``inference``: latency of backbone + decoder (routing record and FLOPs included) on a
  random normalised batch, for the faithful eager fp32 path and each inference mode
  (``dyn_seg.benchmark.INFERENCE_MODES``: the fast plan's cumulative steps, its bf16 and
  compiled variants, and the graph plans, dense and conditional, eager, compiled as one
  graph and replayed as one CUDA graph), with real GFLOPs per image, the share of the
  all-open real FLOPs that the gates shut, agreement with the faithful logits (largest
  difference, argmax agreement), first-call time and peak memory;
* ``train``: training steps per second (forward, losses, backward, SGD step) and peak
  memory for the faithful path and the training switches (channels_last, bf16 autocast,
  compilation, per-cell activation checkpointing);
* ``count``: operators that run a kernel and host reads (``.item()``, ``.tolist()``,
  data-dependent shapes) of one inference forward per mode (``--modes``) and of one
  training forward + backward per training mode (``--train-modes``); the counts do not
  depend on the input size, so a small ``--size`` / ``--train-size`` works on any device;
* ``profile``: a torch.profiler summary per inference mode (device busy share and top
  kernels on CUDA; top operators by CPU time on a CPU);
* ``deploy`` (CPU): latency of the exported models (``.pt2`` with torch, ``.onnx`` in ONNX
  Runtime; conditional and dense) against the eager fast plan, for each of
  ``--deploy-gates`` (exports into ``--deploy-dir``; minutes per pattern for L16).

Modes whose plan or switch this version of the model code lacks, or that need CUDA, are
errors naming the reason; ``--skip-unavailable`` reports them in the header and measures
the others. All modes run on the same weights and input, interleaved, median of --iters
after --warmup rounds. Without --weights the random network's norms are calibrated on
random batches (--calibrate, as precise BN does), so activations have trained-like
scales. --gates forces input-independent gate patterns (open, or a seeded fraction of
paths / cells closed) to measure budget-model behaviour without trained weights.

Peak memory: on CUDA the caching allocator's peak; on a CPU the peak of tensor bytes held
through torch's CPU allocator during one call (``tensor_peak_mb``, from torch.profiler's
memory events) beside the process's peak resident set.

Examples::

    python tools/benchmark.py --device cpu --threads 2 --size 256 512 --gates open
    python tools/benchmark.py --config-file configs/Cityscapes/Dynamic-L16-Raw.yaml \\
        --device cuda --size 1024 2048 --gates paths:0.5 --task inference
    python tools/benchmark.py --task train --train-size 768 768 --train-batch 8 \\
        --train-modes faithful channels_last-bf16 compile --device cuda
    python tools/benchmark.py --config-file configs/Cityscapes/Dynamic-L33-Raw-ImageNet.yaml \\
        --task count --size 64 128 --train-size 64 64 --train-batch 2 --device cpu
    python tools/benchmark.py --task deploy --device cpu --threads 1 --size 256 512 \\
        --deploy-gates open cells:0.5
"""
from __future__ import annotations

import argparse
import json
import os
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
from dyn_seg.benchmark.modes import available
from dyn_seg.benchmark.op_counts import count_inference, count_training
from dyn_seg.benchmark.profiling import profile_inference
from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.utils.cli import (
    add_size_argument,
    add_weights_and_opts,
    int_at_least,
    parse_tool_args,
)

DEFAULT_MODES = {
    "inference": ["faithful", "fast-base", "fast-fold", "fast-fold-cl", "fast-fold-cl-skip",
                  "fast"],
    # count / profile: every plan that needs no compilation (compiled modes on request)
    "count": ["faithful", "fast-base", "fast", "fast-bf16", "graph-dense", "graph-conditional",
              "graph-dense-bf16", "graph-conditional-bf16", "graph-dense-cudagraph",
              "graph-conditional-cudagraph"],
}
DEFAULT_TRAIN_MODES = {
    "train": ["faithful", "channels_last", "bf16", "channels_last-bf16"],
    "count": ["faithful", "bf16", "checkpoint", "bf16-checkpoint"],
}
TASKS = ("inference", "train", "all", "count", "profile", "deploy")


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
    p.add_argument("--task", choices=TASKS, default="inference",
                   help="inference | train | all (both) | count (operators and host reads "
                        "per forward) | profile (torch.profiler summary per inference mode) "
                        "| deploy (exported models in ONNX Runtime and torch, CPU)")
    add_size_argument(p, default=(1024, 2048), help="inference input size (padded to MAX_STRIDE)")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="inference batch size")
    p.add_argument("--modes", nargs="+", default=None, choices=list(INFERENCE_MODES),
                   metavar="MODE",
                   help="inference modes (default: the fast plan's steps for inference; "
                        "every plan without compilation for count and profile): "
                        + ", ".join(INFERENCE_MODES))
    add_size_argument(p, "--train-size", default=(768, 768), help="training input size")
    p.add_argument("--train-batch", type=int_at_least(1), default=8)
    p.add_argument("--train-modes", nargs="+", default=None, choices=list(TRAINING_MODES),
                   metavar="MODE", help="training modes (default for train: faithful, "
                                        "channels_last, bf16, channels_last-bf16; for count: "
                                        "faithful, bf16, checkpoint, bf16-checkpoint): "
                                        + ", ".join(TRAINING_MODES))
    p.add_argument("--skip-unavailable", action="store_true",
                   help="measure the available modes and list the others (with the reason) "
                        "in the header, instead of stopping with an error")
    p.add_argument("--gates", default="natural",
                   help="natural | open | paths:F | cells:F (fraction F forced closed)")
    p.add_argument("--deploy-gates", nargs="+", default=["open", "cells:0.5"],
                   help="--task deploy: gate patterns (forms of --gates), one export each")
    p.add_argument("--deploy-dir", default="output/benchmark_deploy",
                   help="--task deploy: where the exported models are written")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, gates and inputs")
    p.add_argument("--calibrate", type=int_at_least(-1, "-1: the default"), default=-1,
                   help="random batches to calibrate norms on (-1: 2 without --weights)")
    p.add_argument("--warmup", type=int_at_least(0), default=2,
                   help="interleaved warm-up rounds")
    p.add_argument("--iters", type=int_at_least(1), default=10,
                   help="interleaved measured rounds (profile: profiled calls per mode)")
    add_weights_and_opts(p, "checkpoint to load (default: random init)")
    args = parse_tool_args(p, argv)
    try:
        for gates in [args.gates] + list(args.deploy_gates):
            parse_gates(gates)  # fail early with the allowed forms
    except ValueError as e:
        p.error(str(e))
    if args.task == "deploy" and args.device != "cpu":
        p.error("--task deploy measures CPU runtimes (ONNX Runtime's CPU provider): use "
                "--device cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device!r} is not a torch device: use cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; use --device cpu")
    kind = "count" if args.task in ("count", "profile") else "inference"
    # default mode lists name modes of later versions too: those this version lacks are
    # listed in the header, not errors
    implicit = {"inference": args.modes is None, "train": args.train_modes is None}
    if args.modes is None:
        args.modes = list(DEFAULT_MODES[kind])
    if args.train_modes is None:
        args.train_modes = list(DEFAULT_TRAIN_MODES["count" if kind == "count" else "train"])
    args.unavailable = {}
    wanted = {"inference": args.task in ("inference", "all", "count", "profile"),
              "train": args.task in ("train", "all", "count")}
    for task in ("inference", "train"):
        names = args.modes if task == "inference" else args.train_modes
        ok, missing = available(task, names, device) if wanted[task] else (names, {})
        if missing and not (args.skip_unavailable or implicit[task]):
            p.error("; ".join(missing.values())
                    + ". Choose other modes, or pass --skip-unavailable to measure the others.")
        args.unavailable.update({f"{task}:{name}": why for name, why in missing.items()})
        if task == "inference":
            args.modes = ok
        else:
            args.train_modes = ok
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
    weights = {"gates": args.deploy_gates} if args.task == "deploy" else prepare_weights(
        model, args.gates, args.seed, calibrate, calibration_size=(size[0] // 2, size[1] // 2))
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
        "layers": cfg.MODEL.BACKBONE.LAYER_NUM,
        "unavailable_modes": args.unavailable,
        "command": " ".join(["python", "tools/benchmark.py"] + (argv or sys.argv[1:])),
    }
    if args.task == "deploy":
        header["onnxruntime"] = _version("onnxruntime")
        header["load_average"] = list(os.getloadavg())  # a shared machine: busy or not
    records = [header]
    print(json.dumps(header), flush=True)
    train_size = tuple(args.train_size)
    runs = []
    if args.task in ("inference", "all") and args.modes:
        runs.append(lambda: benchmark_inference(model, args.modes, size, args.batch,
                                                args.warmup, args.iters, args.seed))
    if args.task in ("train", "all") and args.train_modes:
        runs.append(lambda: benchmark_training(model, args.train_modes, train_size,
                                               args.train_batch, args.warmup, args.iters,
                                               args.seed))
    if args.task == "count":
        if args.modes:
            runs.append(lambda: count_inference(model, args.modes, size, args.batch, args.seed))
        if args.train_modes:
            runs.append(lambda: count_training(model, args.train_modes, train_size,
                                               args.train_batch, args.seed))
    if args.task == "deploy":
        from dyn_seg.benchmark.deploy import benchmark_deploy

        threads = torch.get_num_threads()
        runs.append(lambda: benchmark_deploy(model, args.deploy_gates, size, args.batch,
                                             args.warmup, args.iters, args.seed, calibrate,
                                             args.deploy_dir, threads))
    if args.task == "profile" and args.modes:
        runs.append(lambda: profile_inference(model, args.modes, size, args.batch, args.iters,
                                              args.seed))
    for run in runs:
        for r in run():
            records.append(r)
            print(json.dumps(r), flush=True)
    return records


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
