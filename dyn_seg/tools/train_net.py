"""Train or evaluate a Dynamic Routing network: the program of ``train_net.py``.

    python train_net.py --config-file configs/Cityscapes/Dynamic-L16-B.yaml --num-gpus 8
    python -m dyn_seg.tools.train_net --config-file CONFIG --resume

Datasets are read from $DETECTRON2_DATASETS (export it before running). With
``--num-gpus N`` on a machine without GPUs, N CPU processes train together (gloo).
:func:`launch_main` is the command line: it starts detectron2's :func:`launch`, whose
workers import :func:`main` from this module by name. The training logic lives in
:mod:`dyn_seg.engine`.
"""
# ``dyn_seg`` (the package of this module) is imported before anything here: detectron2 and
# fvcore then load without deprecation noise
from typing import List, Optional

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.checkpoint import DynSegCheckpointer
from dyn_seg.engine import Trainer
from dyn_seg.engine.output_dir import prepare_output_dir, release_output_dir
from dyn_seg.evaluation import report_results


def setup(args):
    """Config from defaults, dyn_seg keys, ``--config-file`` and command-line overrides.

    For training, OUTPUT_DIR is checked and locked first (:func:`prepare_output_dir`: no
    second run on it, no new run over another run's checkpoints, ``--resume`` only with
    the checkpoints' model), before detectron2 writes config.yaml there.
    """
    cfg = get_dyn_seg_cfg(args.config_file, args.opts)
    if not args.eval_only:
        cfg.OUTPUT_DIR = prepare_output_dir(cfg, resume=args.resume,
                                            new_run_subdir=args.new_run_subdir)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dyn_seg")
    return cfg


def main(args):
    """One process: train (or with ``--eval-only`` evaluate) and report the results."""
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg)
        DynSegCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_unsafe_pickle=args.allow_unsafe_pickle,
            inference=True, allow_partial_weights=args.allow_partial_weights,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
    else:
        trainer = Trainer(cfg, allow_unsafe_pickle=args.allow_unsafe_pickle)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.is_main_process():
        report_results(results, cfg.OUTPUT_DIR, cfg.DATASETS.TEST)
        release_output_dir(cfg.OUTPUT_DIR)
    return results


def argument_parser():
    """detectron2's training arguments and dyn_seg's."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="allow MODEL.WEIGHTS to be a pickled .pkl/.pyth file (runs code from the file; "
        "only for files you trust)",
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="with --eval-only: evaluate even when MODEL.WEIGHTS is empty or leaves parameters "
        "missing or wrongly shaped (they keep their random initialisation)",
    )
    parser.add_argument(
        "--new-run-subdir",
        action="store_true",
        help="when OUTPUT_DIR holds another training run, start this one afresh in the next "
        "free subfolder OUTPUT_DIR/run_N instead of stopping (the old run stays untouched)",
    )
    return parser


def launch_main(argv: Optional[List[str]] = None) -> None:
    """The command line: parse ``argv`` (default: ``sys.argv[1:]``) and run :func:`main` in
    ``--num-gpus`` processes on each of ``--num-machines`` machines (detectron2's launch)."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    # run the module's functions under its own name, which the launched workers import
    from dyn_seg.tools.train_net import launch_main as _launch_main

    _launch_main()
