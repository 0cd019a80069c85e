"""Real FLOPs of starved cells and of the decoder (PAPER.md section 4), checked against
numbers derived by hand for a one-layer network."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.benchmark import GatePattern, apply_gate_pattern

# One routed layer with two cells, C = 8, stem width 8, 3 classes, BN, counted at 64 x 64.
# The init cell closes both of its paths (keep, down): at inference it is dropped, so cell
# (0, 0) still receives its input X, while the new scale's cell (0, 1), whose only input is
# the init cell's down output, receives nothing at all.
#
# FLOPs by hand (conv k*k*Cin/groups*Cout*Hout*Wout; BN and ReLU H*W*C; pool H*W*C):
#   stem_1   3x3 s2 3->8 at 32x32 (+BN, ReLU):   221184 + 8192 + 8192         = 237568
#   stem_2   dw 3x3 8 at 32x32 + 1x1 8->8:        73728 + 65536 + 8192 + 8192 = 155648
#   stem_3   dw 3x3 s2 at 16x16 + 1x1 8->8:       18432 + 16384 + 2048 + 2048 =  38912
#   cell (0, 0) ops, sep_conv_3x3 at 16x16, C=8: 18432 + 20480 + 18432 + 18432 =  75776
#   cell (0, 0) gate, 1 path: 8192 + 1024 + 1024 + pool 1024 + 4             =  11268
#   cell (0, 1) gate, 1 path, C=16 at 8x8: 8192 + 512 + 512 + pool 512 + 8     =   9736
#   decoder 16->8 at 8x8 (+BN, ReLU): 8192 + 512 + 512                        =   9216
#   decoder 8->8 at 16x16 (+BN, ReLU): 16384 + 2048 + 2048                     =  20480
#   predictor 3x3 8->3 at 16x16 (bias not counted)                             =  55296
STEM = 237568 + 155648 + 38912
OPS_00, GATE_00, GATE_01 = 75776, 11268, 9736
HEAD = 9216 + 20480 + 55296
# the starved cell (0, 1) adds its gate although it never ran; the decoder counts every
# layer although feature layer_1 does not exist
REAL = STEM + OPS_00 + GATE_00 + GATE_01 + HEAD  # 613900 FLOPs
OPEN = math.tanh(8.0)  # a forced-open gate's activation


def _model(fast: bool):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{
        "MODEL.BACKBONE.LAYER_NUM": 1, "MODEL.BACKBONE.CELL_NUM_LIST": [2],
        "MODEL.BACKBONE.STEM_WIDTH": 8, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 3,
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["layer_0", "layer_1"],
        "INPUT.FIX_SIZE_FOR_FLOPS": [64, 64], "MODEL.FAST.ENABLED": fast,
    })
    model = build_model(cfg).eval()
    apply_gate_pattern(model.backbone, GatePattern({(-1, 0): ("keep", "down")}))
    return model


@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_starved_cell_adds_its_gate_and_decoder_counts_every_layer(fast):
    model = _model(fast)
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.rand(3, 64, 64, generator=g) * 255} for _ in range(2)]
    with torch.no_grad():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    for out in batched + single:
        assert out["flops"]["real"] * 1e9 == pytest.approx(REAL, rel=1e-6)
        assert out["flops"]["expected"] * 1e9 == pytest.approx(OPEN * OPS_00, rel=1e-6)
        assert (0, 1) not in out["routing"]  # the starved cell computed nothing


def test_decoder_flops_are_one_constant_per_counting_size():
    model = _model(fast=False)
    assert model.sem_seg_head.flops((64, 64)) * 1e6 == pytest.approx(HEAD)


def _per_cell_rule(net, routing, n):
    """The rule of PAPER.md section 4 written cell by cell (independently of dyn_seg's
    vectorised accounting): expected = max(alpha) * ops + alpha * transition over inputs;
    real = [sum(alpha) > eps] * ops + [alpha > eps] * transition + every routed gate."""
    from dyn_seg.modeling.routing.cell import GATE_EPS

    table, _ = net.flops_table(net.counting_size(torch.zeros(1, 3, 64, 64)))
    expected, real = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for spec in (s for layer in net.cell_specs for s in layer):
        for inp in spec.inputs:
            sender = routing[(inp.layer, inp.scale)]
            if sender.alpha is None:
                continue
            paths = list(table[(inp.layer, inp.scale)].paths)
            a = sender.alpha[:, paths.index(inp.path)].double()
            cost = table[(inp.layer, inp.scale)].paths[inp.path]
            expected += a * cost
            real += (a > GATE_EPS).double() * cost
        own, cost = routing[(spec.layer, spec.scale)], table[(spec.layer, spec.scale)]
        real += cost.gate
        if own.alpha is not None and not own.dropped:
            expected += own.alpha.double().max(dim=1).values * cost.ops
            real += (own.alpha.double().sum(dim=1) > GATE_EPS).double() * cost.ops
    return expected, real


def test_routing_flops_follow_the_rule_for_open_closed_dropped_and_absent_cells():
    from dyn_seg.modeling.cost.flops import CellRouting, routing_flops

    torch.manual_seed(0)
    net = build_model(tiny_cfg(**{"MODEL.BACKBONE.LAYER_NUM": 3})).backbone
    g = torch.Generator().manual_seed(1)
    n = 3
    routing = {}
    keys = [(net.init_spec.layer, net.init_spec.scale)] + [
        (s.layer, s.scale) for layer in net.cell_specs for s in layer]
    table, _ = net.flops_table((64, 64))
    for i, key in enumerate(keys):
        width = len(table[key].paths)
        alpha = torch.rand(n, width, generator=g)
        alpha[alpha < 0.3] = 0.0  # closed paths
        alpha.requires_grad_(True)
        if i % 5 == 3:
            routing[key] = CellRouting(None, True)      # received nothing
        elif i % 5 == 4:
            routing[key] = CellRouting(alpha, True)     # dropped (drop path)
        else:
            routing[key] = CellRouting(alpha, False)
    assert any(r.alpha is None for r in routing.values())
    expected, real = routing_flops(net.routing_costs((64, 64)), routing, n, torch.zeros(1))
    want_expected, want_real = _per_cell_rule(net, routing, n)
    torch.testing.assert_close(expected.double(), want_expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(real.double(), want_real, rtol=1e-6, atol=1e-9)
    # expected FLOPs carry the gradient the budget loss needs, as the rule's do
    alphas = [r.alpha for r in routing.values() if r.alpha is not None]
    grads = torch.autograd.grad(expected.sum(), alphas, allow_unused=True)
    want = torch.autograd.grad(want_expected.sum(), alphas, allow_unused=True)
    for alpha, got, ref in zip(alphas, grads, want):
        got = torch.zeros_like(alpha) if got is None else got
        ref = torch.zeros_like(alpha) if ref is None else ref
        torch.testing.assert_close(got.double(), ref.double(), rtol=1e-6, atol=1e-9)
