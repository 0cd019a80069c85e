"""Config keys of dyn_seg, added to a detectron2 config by :func:`add_dynamic_routing_config`.

Key names follow the reference implementation where it had them, so that its users
recognise them; everything detectron2 already has (solver, datasets, test) keeps
detectron2's keys.
"""
from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode as CN


def add_dynamic_routing_config(cfg: CN) -> CN:
    """Add every dyn_seg key with its default to ``cfg`` (in place) and return it."""
    _C = cfg
    # Keys of detectron2's Panoptic-DeepLab project (MODEL.INS_EMBED_HEAD, MODEL.PANOPTIC_DEEPLAB,
    # INPUT.GAUSSIAN_SIGMA, ...), read by DynamicPanopticDeepLab (dyn_seg.modeling.panoptic).
    if "INS_EMBED_HEAD" not in _C.MODEL:
        from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config

        add_panoptic_deeplab_config(_C)

    _C.MODEL.BACKBONE.NAME = "build_dynamic_routing_backbone"
    # Operations summed inside every cell (see dyn_seg.modeling.ops for the known names).
    _C.MODEL.BACKBONE.CELL_TYPE = ["sep_conv_3x3", "skip_connect"]
    # Number of routed layers L (16 or 33 in the paper).
    _C.MODEL.BACKBONE.LAYER_NUM = 16
    # Cells per layer; [] means the paper's space [2, 3, 4, 4, ...] (one new scale per layer).
    _C.MODEL.BACKBONE.CELL_NUM_LIST = []
    # Channels C of the stride-4 cells; a cell at stride 4 * 2**i has C * 2**i channels.
    _C.MODEL.BACKBONE.INIT_CHANNEL = 64
    # Coarsest stride of the routing space (32: scales 1/4, 1/8, 1/16, 1/32); inputs are
    # padded to a multiple of it.
    _C.MODEL.BACKBONE.MAX_STRIDE = 32
    # Separable (depthwise + 1x1) convolutions in the stem instead of plain 3x3 ones.
    _C.MODEL.BACKBONE.SEPT_STEM = True
    # Channels inside the stem before its last layer (fixed at 64 in the reference).
    _C.MODEL.BACKBONE.STEM_WIDTH = 64
    # Norm of every layer of backbone and gates: a detectron2 norm name ("BN", "SyncBN",
    # "nnSyncBN", "naiveSyncBN", "GN", ...). Names containing "Sync" count twice in FLOPs.
    _C.MODEL.BACKBONE.NORM = "BN"
    # Scheduled drop path: probability of dropping an operation at the end of training in
    # the last layer (scaled by training progress and depth). 0 disables it.
    _C.MODEL.BACKBONE.DROP_PROB = 0.0

    _C.MODEL.GATE = CN()
    # Soft conditional gates; False gives "Network-Fix" (every path always on, no gates).
    _C.MODEL.GATE.GATE_ON = True
    # Initial bias of the gates' last convolution (tanh(1.5) = 0.9: paths start open).
    _C.MODEL.GATE.GATE_INIT_BIAS = 1.5
    # The gate looks at its input resized to a quarter per side (cheaper gates).
    _C.MODEL.GATE.SMALL_GATE = False

    _C.MODEL.BUDGET = CN()
    # Add the budget constraint loss_budget = LOSS_WEIGHT * w * (E[FLOPs]/FLOPS_ALL - LOSS_MU)^2.
    _C.MODEL.BUDGET.CONSTRAIN = False
    # Budget loss weight (lambda in the paper).
    _C.MODEL.BUDGET.LOSS_WEIGHT = 0.5
    # Target share of FLOPS_ALL for the expected FLOPs (mu in the paper).
    _C.MODEL.BUDGET.LOSS_MU = 0.1
    # MFLOPs of all cells with every path on at 768x768 (the normaliser of the budget).
    _C.MODEL.BUDGET.FLOPS_ALL = 26300.0
    # Share of training (step_rate) before which the budget loss is off.
    _C.MODEL.BUDGET.UNUPDATE_RATE = 0.4
    # Ramp the budget weight linearly over 2% of training after UNUPDATE_RATE.
    _C.MODEL.BUDGET.WARM_UP = True

    # Compute expected / real FLOPs in every forward (needed by the budget loss and reports).
    _C.MODEL.CAL_FLOPS = True
    # [H, W] at which FLOPs are counted, as the reference ([768, 768] in training, [1024,
    # 2048] for Cityscapes evaluation). [] counts at each batch's (padded) input size, which
    # gives the right numbers for training crops and full test frames alike.
    _C.INPUT.FIX_SIZE_FOR_FLOPS = []

    _C.MODEL.SEM_SEG_HEAD.NAME = "DynamicSemSegHead"
    _C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["layer_0", "layer_1", "layer_2", "layer_3"]
    _C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    _C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    _C.MODEL.SEM_SEG_HEAD.NORM = "BN"
    _C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

    _C.MODEL.META_ARCHITECTURE = "DynamicSemanticSegmentor"

    # Fast paths (dyn_seg.fast). Inference: an eval-only copy of the model with the same
    # weights that computes only what the gates open; same outputs within float rounding.
    _C.MODEL.FAST = CN()
    # Use the fast inference path in eval mode: same weights, float32, logits within 1e-4
    # of the faithful eager path, about 2x faster on CPU (BENCHMARKS.md). False: the
    # faithful eager path (what the reference-parity tests check).
    _C.MODEL.FAST.ENABLED = True
    # Fold eval-mode batch norms into the preceding convolutions.
    _C.MODEL.FAST.FOLD_BN = True
    # Run convolutions on channels_last (NHWC) tensors.
    _C.MODEL.FAST.CHANNELS_LAST = True
    # Skip operations and transitions that every image of the batch has closed.
    _C.MODEL.FAST.SKIP_CLOSED_PATHS = True
    # Run each cell's operations and transitions only on the images that need them
    # (sub-batches); needs SKIP_CLOSED_PATHS.
    _C.MODEL.FAST.PER_IMAGE_ROUTING = True
    # Inference in bfloat16 (gates' last layer and logits in float32); same argmax mostly,
    # not the same numbers: off by default.
    _C.MODEL.FAST.BF16 = False
    # torch.compile backend for the static modules ("" off, "inductor"); compiling takes
    # minutes, and on CPU needs a C++ compiler.
    _C.MODEL.FAST.COMPILE = ""
    # torch.compile mode for inductor: "default", "reduce-overhead" (CUDA graphs),
    # "max-autotune", "max-autotune-no-cudagraphs".
    _C.MODEL.FAST.COMPILE_MODE = "default"
    # Training steps (dyn_seg.fast.prepare_for_training / training_autocast): NHWC weights,
    # bfloat16 autocast, torch.compile backend of the static modules ("" off).
    _C.MODEL.FAST.TRAIN_CHANNELS_LAST = False
    _C.MODEL.FAST.TRAIN_BF16 = False
    _C.MODEL.FAST.TRAIN_COMPILE = ""

    # Training (dyn_seg.engine). LR multiplier of every parameter whose name contains
    # "gate" (2.5 in the paper's Cityscapes recipe).
    _C.SOLVER.GATE_LR_MULTI = 1.0
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR": lr = BASE_LR * warmup * (1 - iter/MAX_ITER)**POWER.
    _C.SOLVER.POLY_LR_POWER = 0.9
    # After warm-up the poly factor never drops below this (0: decay to 0 at MAX_ITER).
    _C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE may also be "full_model": clip the global norm over all
    # parameters together (the paper's clipping at 5.0), besides detectron2's per-parameter
    # "value" / "norm".
    # Also run cityscapesscripts' official evaluation (reported as "cityscapes_sem_seg")
    # beside the mIoU of detectron2's SemSegEvaluator on Cityscapes-type datasets.
    _C.TEST.CITYSCAPES_OFFICIAL_EVAL = True
    return cfg


def get_dyn_seg_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """detectron2's default config with the dyn_seg keys, ``config_file`` (if given) and the
    ``KEY VALUE`` overrides ``opts`` merged in, in that order (not frozen)."""
    from detectron2.config import get_cfg

    cfg = add_dynamic_routing_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg
