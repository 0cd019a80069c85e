"""Config keys of dyn_seg, added to a detectron2 config by :func:`add_dynamic_routing_config`.

Key names follow the reference implementation where it had them, so that its users
recognise them; everything detectron2 already has (solver, datasets, test) keeps
detectron2's keys. As in detectron2's own projects, :func:`add_dynamic_routing_config` only
*adds* keys: the values of detectron2's keys that select our model (meta-architecture,
backbone and head names, the head's features) live in ``configs/Base-DynamicRouting.yaml``,
which every shipped config chains to and :func:`get_dyn_seg_cfg` merges first.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

#: Config file (under ``configs/``) with detectron2's keys set to build a Dynamic Routing model.
BASE_CONFIG = "Base-DynamicRouting.yaml"

#: Precisions accepted by ``SOLVER.AMP.PRECISION``.
AMP_PRECISIONS = ("bfloat16", "float16")

#: Keys that were removed, with what to use instead (a config that sets one gets this text).
REMOVED_KEYS = {
    "MODEL.FAST.TRAIN_BF16": "SOLVER.AMP.ENABLED True (with SOLVER.AMP.PRECISION bfloat16): "
    "training in bfloat16 runs through detectron2's AMPTrainer",
}



def add_dynamic_routing_config(cfg: CN) -> CN:
    """Add every dyn_seg key with its default to ``cfg`` (in place) and return it."""
    _C = cfg
    # SOLVER.POLY_LR_POWER / POLY_LR_CONSTANT_ENDING of detectron2's DeepLab project, whose
    # WarmupPolyLR schedule (SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR") the trainer uses.
    add_deeplab_config(_C)
    # Keys of detectron2's Panoptic-DeepLab project (MODEL.INS_EMBED_HEAD, MODEL.PANOPTIC_DEEPLAB,
    # INPUT.GAUSSIAN_SIGMA, ...), read by DynamicPanopticDeepLab
    # (dyn_seg.modeling.meta_arch.panoptic).
    if "INS_EMBED_HEAD" not in _C.MODEL:
        from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config

        add_panoptic_deeplab_config(_C)
    # Panoptic-DeepLab's ASPP image pooling at test time: "global" (the whole feature map, as
    # in training on crops; any input size) or "crop" (detectron2's window of the training
    # crop; inputs must tile into it). See dyn_seg.modeling.aspp_pooling.
    _C.MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING = "global"
    # "SGD" (the paper's: momentum, nesterov) or "ADAM" (Panoptic-DeepLab's); the Panoptic-
    # DeepLab project sets "ADAM" by default, dyn_seg keeps the paper's SGD unless asked.
    _C.SOLVER.OPTIMIZER = "SGD"

    # Operations summed inside every cell (see dyn_seg.modeling.routing.ops for the known names).
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

    # Fast execution (dyn_seg.modeling.execution.plans / transforms). Inference: the fast plan on a
    # transformed copy of the same modules, computing only what the gates open; same
    # outputs within float rounding.
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
    # Execution plan of the inference copy: "fast" (the gates of a layer read by the host,
    # closed paths skipped per image on sub-batches), "graph-dense" (no host decision:
    # every path computed and weighted, one program per input shape) or
    # "graph-conditional" (no host decision when compiled or exported: each cell's
    # operations and transitions under a device predicate, torch.cond).
    _C.MODEL.FAST.PLAN = "fast"
    # With PLAN graph-dense on CUDA: capture the whole forward pass as a CUDA graph once per
    # input shape and replay it (the host issues one launch per forward pass).
    _C.MODEL.FAST.CUDA_GRAPH = False
    # Training steps (dyn_seg.modeling.meta_arch.training.prepare_for_training): NHWC weights,
    # torch.compile backend of the static modules ("" off). Mixed precision in training is
    # detectron2's SOLVER.AMP.ENABLED (+ SOLVER.AMP.PRECISION).
    _C.MODEL.FAST.TRAIN_CHANNELS_LAST = False
    _C.MODEL.FAST.TRAIN_COMPILE = ""
    # What TRAIN_COMPILE compiles: "modules" (each static module; routing in Python) or
    # "network" (the routed network's whole forward pass as one graph, fullgraph=True).
    _C.MODEL.FAST.TRAIN_COMPILE_SCOPE = "modules"
    # Recompute each cell's activations in the backward pass instead of keeping them
    # (torch.utils.checkpoint, non-reentrant): less memory, about one more forward pass of
    # compute, the same gradients.
    _C.MODEL.FAST.TRAIN_CHECKPOINT = False

    # Training (dyn_seg.engine). LR multiplier of every parameter whose name contains
    # "gate" (2.5 in the paper's Cityscapes recipe).
    _C.SOLVER.GATE_LR_MULTI = 1.0
    # Computation dtype of SOLVER.AMP.ENABLED training: "bfloat16" (no loss scaling needed;
    # also on CPU) or "float16" (CUDA only, with detectron2's gradient scaler). detectron2's
    # yacs config has no key for AMPTrainer's precision argument.
    _C.SOLVER.AMP.PRECISION = "bfloat16"
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE may also be "full_model": clip the global norm over all
    # parameters together (the paper's clipping at 5.0), besides detectron2's per-parameter
    # "value" / "norm".
    # Also run cityscapesscripts' official evaluation (reported as "cityscapes_sem_seg")
    # beside the mIoU of detectron2's SemSegEvaluator on Cityscapes-type datasets.
    _C.TEST.CITYSCAPES_OFFICIAL_EVAL = True

    # Context head (dyn_seg.modeling.heads.context.DynamicContextSemSegHead).
    _C.MODEL.SEM_SEG_HEAD.CONTEXT = CN()
    # Context module on the coarsest feature: "PSP" (pyramid pooling, PSPNet) or "ASPP"
    # (atrous spatial pyramid pooling, DeepLabV3).
    _C.MODEL.SEM_SEG_HEAD.CONTEXT.NAME = "PSP"
    # PSP: output sizes of the adaptive average poolings (PSPNet's 1, 2, 3, 6).
    _C.MODEL.SEM_SEG_HEAD.CONTEXT.PSP_BINS = [1, 2, 3, 6]
    # ASPP: dilations of its three 3x3 convolutions. DeepLabV3 uses (6, 12, 18) at output
    # stride 16 and doubles them at stride 8; on this head's stride-32 feature the same
    # field of view in pixels is (3, 6, 9).
    _C.MODEL.SEM_SEG_HEAD.CONTEXT.ASPP_DILATIONS = [3, 6, 9]
    # ASPP: dropout on its output during training (DeepLab uses 0.1).
    _C.MODEL.SEM_SEG_HEAD.CONTEXT.ASPP_DROPOUT = 0.0

    # Classification (dyn_seg.modeling.meta_arch.classification.DynamicClassifier, ImageNet
    # pretraining of the backbone).
    _C.MODEL.CLASSIFIER = CN()
    # Number of classes (1000 for ImageNet-1k).
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    # Backbone features that are globally average-pooled and concatenated before the linear
    # classifier; the coarsest (stride 32) one by default.
    _C.MODEL.CLASSIFIER.IN_FEATURES = ["layer_3"]
    _C.INPUT.CLASSIFICATION = CN()
    # Training: random resized crop to CROP_SIZE x CROP_SIZE covering MIN_SCALE..1 of the
    # image area (aspect ratio 3/4..4/3), then a horizontal flip with probability 0.5.
    _C.INPUT.CLASSIFICATION.CROP_SIZE = 224
    _C.INPUT.CLASSIFICATION.MIN_SCALE = 0.08
    # Testing: resize the short edge to TEST_RESIZE, then a centre crop of CROP_SIZE.
    _C.INPUT.CLASSIFICATION.TEST_RESIZE = 256
    return cfg


def config_root() -> Path:
    """The folder of dyn_seg's configs: ``dyn_seg/configs`` in an installed package (setup.py
    copies the repository's ``configs/`` there), else ``configs/`` of the source checkout."""
    here = Path(__file__).resolve().parent
    for root in (here / "configs", here.parent / "configs"):
        if (root / BASE_CONFIG).is_file():
            return root
    raise FileNotFoundError(
        f"dyn_seg's configs ({BASE_CONFIG} and the rest) were found neither in the package "
        f"({here / 'configs'}) nor in a source checkout ({here.parent / 'configs'}): "
        "reinstall dyn_seg (pip install .) from a complete source checkout."
    )


def base_config_file() -> str:
    """Path of ``configs/Base-DynamicRouting.yaml`` (source checkout or installed package)."""
    return str(config_root() / BASE_CONFIG)


def _removed_key_errors(config_file: str, opts: Sequence[str]) -> None:
    """Raise a KeyError naming the replacement when the file or ``opts`` set a removed key."""
    keys = set(opts[0::2])
    if config_file:
        loaded = CN.load_yaml_with_base(config_file, allow_unsafe=True)
        stack = [("", loaded)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                keys.add(prefix + k)
                if isinstance(v, dict):
                    stack.append((prefix + k + ".", v))
    for key in sorted(keys & set(REMOVED_KEYS)):
        where = config_file or "the command line"
        raise KeyError(f"{key} (set in {where}) was removed: use {REMOVED_KEYS[key]}.")


def check_amp_precision(precision: str, device_type: str = "") -> None:
    """Reject a ``SOLVER.AMP.PRECISION`` no code path accepts: a name outside
    :data:`AMP_PRECISIONS`, or float16 on a device other than CUDA (``device_type``, when
    known; float16 needs detectron2's CUDA gradient scaler)."""
    if precision not in AMP_PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.PRECISION={precision!r} is not allowed: use one of {AMP_PRECISIONS}."
        )
    if device_type and device_type != "cuda" and precision != "bfloat16":
        raise ValueError(
            f"SOLVER.AMP.PRECISION={precision!r} needs a CUDA device; on the {device_type} "
            "use SOLVER.AMP.PRECISION bfloat16."
        )


def validate_config(cfg: CN) -> None:
    """Reject values of dyn_seg's training keys that no code path accepts."""
    check_amp_precision(cfg.SOLVER.AMP.PRECISION)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _example(value) -> str:
    """How to write ``value`` on the command line."""
    if isinstance(value, (tuple, list)):
        return f'"{tuple(value)!r}"'
    if isinstance(value, str):
        return repr(value) if value else "some_text"
    return repr(value)


def typed_overrides(cfg: CN, opts: Sequence[str]) -> List[str]:
    """The command-line ``KEY VALUE`` overrides ``opts`` checked against the types of
    ``cfg``: an integer for a float key is taken as that float (``GATE_INIT_BIAS -100`` is
    -100.0); any other value that yacs would refuse is a ValueError naming the key, the
    type it takes and an example. Unknown keys are left to yacs (its KeyError names them).
    """
    from yacs.config import _check_and_coerce_cfg_value_type

    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        key, text = out[i], out[i + 1]
        node = cfg
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, CN) else KeyError
        if node is KeyError or isinstance(node, CN):
            continue
        value = CN._decode_cfg_value(text)
        if isinstance(node, float) and isinstance(value, int) and not isinstance(value, bool):
            out[i + 1] = repr(float(value))
            continue
        try:
            _check_and_coerce_cfg_value_type(value, node, key.split(".")[-1], key)
        except ValueError:
            raise ValueError(
                f"Config override {key} {text}: {key} takes {_a(type(node).__name__)} "
                f"(now {node!r}), not {_a(type(value).__name__)}; e.g. "
                f"{key} {_example(node)}"
            ) from None
    return out


def get_dyn_seg_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """detectron2's default config with the dyn_seg keys, then ``configs/Base-DynamicRouting.yaml``
    (detectron2's keys set to build a Dynamic Routing model), ``config_file`` (if given) and
    the ``KEY VALUE`` overrides ``opts`` merged in, in that order (not frozen).

    A file or override that sets a removed key gets a KeyError naming its replacement;
    overrides are typed by :func:`typed_overrides` (ints accepted for floats).
    """
    from detectron2.config import get_cfg

    opts = list(opts)
    _removed_key_errors(config_file, opts)
    cfg = add_dynamic_routing_config(get_cfg())
    cfg.merge_from_file(base_config_file())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(typed_overrides(cfg, opts))
    validate_config(cfg)
    return cfg
