"""Learning check of the dynamic Panoptic-DeepLab and Mask R-CNN on generated street scenes.

Generates the synthetic Cityscapes-layout data (datasets/generate_synthetic_cityscapes.py),
evaluates the untrained model, trains it with dyn_seg's trainer and evaluates again; with
``--budget-config`` it also trains the budget variant and compares real GFLOPs on the same
val images. Prints one JSON object (also written to OUTPUT/learning_check.json)::

    python tools/task_learning_check.py --task panoptic --output output/check_panoptic
    python tools/task_learning_check.py --task instance --output output/check_instance \\
        --budget-config configs/Synthetic/MaskRCNN-Tiny-Budget.yaml

The score is PQ for panoptic and mask AP (Cityscapes instance evaluation) for instance.
Each task trains with the settings of :data:`CHECK_OPTS` on top of its config (smaller
frames and heads so that a run fits in minutes on 2 CPU cores, and a budget schedule that
acts from the start: the short run has no time for the paper's 40% unconstrained start);
``--opts`` come after them and win.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import List, Optional, Sequence

from dyn_seg.config import config_root
from dyn_seg.utils.cli import int_at_least

TASKS = {
    "panoptic": ("configs/Synthetic/PanopticDeepLab-Tiny.yaml", "panoptic", ("panoptic_seg", "PQ")),
    "instance": ("configs/Synthetic/MaskRCNN-Tiny.yaml", "instance_seg", ("segm", "AP")),
}

#: Settings of the check, before ``--opts``. Both runs of a task (Raw and budget) get the
#: same ones; the budget keys only matter where MODEL.BUDGET.CONSTRAIN is on.
BUDGET_SCHEDULE = ["MODEL.BUDGET.UNUPDATE_RATE", "0.05", "MODEL.BUDGET.LOSS_WEIGHT", "2.0",
                   "SOLVER.WARMUP_ITERS", "10", "SOLVER.IMS_PER_BATCH", "4"]
CHECK_OPTS = {
    # 64x128 frames, narrow heads, Adam at 0.002 (Panoptic-DeepLab's optimiser); sizes of the
    # recipe (sigma, stuff and small-instance areas) scaled to the frames; FLOPS_ALL is the
    # cells' all-open MFLOPs at the 64x128 crop
    "panoptic": BUDGET_SCHEDULE + [
        "SOLVER.OPTIMIZER", "ADAM", "SOLVER.BASE_LR", "0.002",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.CROP.SIZE", "(64, 128)", "INPUT.GAUSSIAN_SIGMA", "1",
        "INPUT.SMALL_INSTANCE_AREA", "16", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "8",
        "MODEL.PANOPTIC_DEEPLAB.NMS_KERNEL", "3",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32", "MODEL.SEM_SEG_HEAD.HEAD_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.INS_EMBED_HEAD.ASPP_CHANNELS", "32",
        "MODEL.INS_EMBED_HEAD.HEAD_CHANNELS", "16", "MODEL.INS_EMBED_HEAD.CONVS_DIM", "16",
        "MODEL.BUDGET.FLOPS_ALL", "9.43",
    ],
    # the config's 128x256 frames, heads and SGD recipe, the LR step scaled to the run
    "instance": BUDGET_SCHEDULE + ["SOLVER.STEPS", "(250,)"],
}

#: Training iterations per run by default (each run takes minutes on 2 CPU cores).
ITERS = {"panoptic": 450, "instance": 300}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--output", required=True, help="folder for data, models and results")
    parser.add_argument("--config-file", default="", help="default: the task's Synthetic config")
    parser.add_argument("--budget-config", default="",
                        help="also train this budget config and compare real GFLOPs")
    parser.add_argument("--iters", type=int_at_least(0, "0: the task's default"), default=0,
                        help=f"training iterations (default: {ITERS} by task)")
    parser.add_argument("--num-train", type=int_at_least(1), default=24)
    parser.add_argument("--num-val", type=int_at_least(1), default=8)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def run(config: str, task_key: str, names: dict, out_dir: str, iters: int,
        opts: List[str]) -> dict:
    """Evaluate untrained, train ``iters`` iterations, evaluate trained."""
    from dyn_seg import get_dyn_seg_cfg
    from dyn_seg.engine import Trainer

    cfg = get_dyn_seg_cfg(_config_path(config), [
        "DATASETS.TRAIN", f"('{names[task_key + '_train']}',)",
        "DATASETS.TEST", f"('{names[task_key + '_val']}',)",
        "SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", out_dir, *opts])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = Trainer.test(cfg, trainer.model)
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    after = Trainer.test(cfg, trainer.model)
    return {"config": config, "iters": iters, "train_seconds": round(seconds, 1),
            "untrained": _plain(before), "trained": _plain(after)}


def _config_path(config: str) -> str:
    """``config`` as given when absolute, else relative to the folder holding ``configs/``
    (the repository root of a source checkout, the package of an installed dyn_seg)."""
    return os.path.join(config_root().parent, config)


def _plain(results) -> dict:
    return {task: {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) or hasattr(v, "item")}
            for task, metrics in results.items()}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    import dyn_seg.modeling  # noqa: F401
    from dyn_seg.data.panoptic import register_cityscapes_tasks
    from dyn_seg.synthetic import generate_synthetic_cityscapes

    setup_logger()
    os.makedirs(args.output, exist_ok=True)
    root = generate_synthetic_cityscapes(os.path.join(args.output, "data"),
                                         num_train=args.num_train, num_val=args.num_val,
                                         progress=False)
    names = register_cityscapes_tasks(root, f"check_{args.task}")
    config, task_key, (metric_task, metric) = TASKS[args.task]
    config = args.config_file or config
    result = {"task": args.task, "metric": f"{metric_task}/{metric}"}
    opts = CHECK_OPTS[args.task] + list(args.opts)
    iters = args.iters or ITERS[args.task]
    result["raw"] = run(config, task_key, names, os.path.join(args.output, "raw"),
                        iters, opts)
    result["score_untrained"] = result["raw"]["untrained"][metric_task][metric]
    result["score_trained"] = result["raw"]["trained"][metric_task][metric]
    if args.budget_config:
        result["budget"] = run(args.budget_config, task_key, names,
                               os.path.join(args.output, "budget"), iters, opts)
        raw, budget = (result[k]["trained"]["routing"] for k in ("raw", "budget"))
        result["gflops_raw"] = raw["GFLOPs_real"]
        result["gflops_budget"] = budget["GFLOPs_real"]
        # the routed network's share (cells + stem); the rest is heads, which for Mask R-CNN
        # also depend on how many proposals and detections each model makes
        result["backbone_gflops_raw"] = raw["GFLOPs_backbone"]
        result["backbone_gflops_budget"] = budget["GFLOPs_backbone"]
        # the cells' expected FLOPs: what the budget loss constrains
        result["expected_gflops_raw"] = raw["GFLOPs_expected"]
        result["expected_gflops_budget"] = budget["GFLOPs_expected"]
        result["train_seconds"] = {k: result[k]["train_seconds"] for k in ("raw", "budget")}
    with open(os.path.join(args.output, "learning_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("raw", "budget")}))
    return result


if __name__ == "__main__":
    main()
