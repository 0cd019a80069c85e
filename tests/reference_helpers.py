"""The reference implementation's side of the parity and conversion tests: its recorded
config as ours, its parameter names, and the tolerances of the parity tests."""
from __future__ import annotations

import re

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.checkpoint import map_reference_key, parameter_part

LOGIT_RTOL = 1e-4  # relative to the largest |logit| (~1e6 with the randomised BN stats)
FLOPS_RTOL = 1e-5
LOSS_RTOL = 1e-4


def reference_cfg(official):
    """A config of the fixture's network, from the reference config values it recorded."""
    cfg = get_dyn_seg_cfg()
    cfg.MODEL.DEVICE = "cpu"
    b = cfg.MODEL.BACKBONE
    for key in ("LAYER_NUM", "CELL_NUM_LIST", "INIT_CHANNEL", "CELL_TYPE", "MAX_STRIDE",
                "SEPT_STEM", "NORM"):
        setattr(b, key, official[key])
    for key in ("GATE_ON", "GATE_INIT_BIAS", "SMALL_GATE"):
        setattr(cfg.MODEL.GATE, key, official[key])
    for key, value in official["BUDGET"].items():
        setattr(cfg.MODEL.BUDGET, key, value)
    h = cfg.MODEL.SEM_SEG_HEAD
    h.NUM_CLASSES = official["NUM_CLASSES"]
    h.IGNORE_VALUE = official["IGNORE_VALUE"]
    h.IN_FEATURES = official["IN_FEATURES"]
    h.NORM = official["NORM"]
    cfg.INPUT.FIX_SIZE_FOR_FLOPS = official["FIX_SIZE_FOR_FLOPS"]
    cfg.MODEL.PIXEL_MEAN = official["PIXEL_MEAN"]
    cfg.MODEL.PIXEL_STD = official["PIXEL_STD"]
    cfg.MODEL.FAST.ENABLED = False  # the faithful eager path is the ground truth
    return cfg


def to_reference(key: str, basic_ops=()) -> str:
    """Our parameter name -> the reference implementation's."""
    k = key.replace("backbone.init_cell.", "backbone.init_layer.")
    k = k.replace("backbone.cells.", "backbone.all_cell_list.")
    k = k.replace(".gate.reduce.", ".gate_conv_beta.0.")
    k = k.replace(".gate.proj.", ".gate_conv_beta.2.")
    k = k.replace(".up.", ".res_up.1.").replace(".down.", ".res_down.1.")
    k = k.replace("sem_seg_head.decoders.", "sem_seg_head.layer_decoder_list.")
    m = re.search(r"\.ops\.(\d+)\.layers\.(\d+)\.", k)
    if m:
        op, layer = m.groups()
        if int(op) in basic_ops:
            assert layer == "0"
            k = f"{k[:m.start()]}.cell_ops._ops.{op}.op.{k[m.end():]}"
        else:
            k = f"{k[:m.start()]}.cell_ops._ops.{op}.op.{layer}.{k[m.end():]}"
    return k


def reference_state(model, basic_ops=(), parts=("backbone", "gates", "head")):
    """The model's state dict under reference names (values + 1, to tell them from init)."""
    out = {}
    for key, value in model.state_dict().items():
        if parameter_part(key) not in parts:
            continue
        ref = to_reference(key, basic_ops)
        assert map_reference_key(ref) == key, (key, ref)
        out[ref] = value.clone() + 1 if value.is_floating_point() else value.clone()
    return out
