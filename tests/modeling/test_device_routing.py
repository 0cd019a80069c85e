"""Routing on the device: no host read inside a forward pass, one graph per forward.

Counts come from :mod:`dyn_seg.benchmark.counting` (a dispatch mode that sees every ATen
operator; ``.tolist()`` watched apart). Tolerances: graph plans against the faithful plan
at 1e-4 absolute on logits of magnitude ~1-10 (float32 with folded norms, the fast-path
tests' bound); bitwise where the same arithmetic runs in the same order (compiled with the
"eager" backend, checkpointing, the faithful gate).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cfg
from detectron2.modeling import build_model
from routed_helpers import routed_tiny_model, varied_images

from dyn_seg.benchmark import GatePattern, apply_gate_pattern
from dyn_seg.benchmark.counting import count_dispatch
from dyn_seg.modeling.execution.plans import GraphPlan
from dyn_seg.modeling.meta_arch.training import prepare_for_training
from dyn_seg.modeling.network.transforms import (
    InferenceCopy,
    InferenceOptions,
    TrainingOptions,
)

GRAPH_PLANS = ["graph-dense", "graph-conditional"]


_images = varied_images
_routed_model = routed_tiny_model


def _faithful(model, x):
    with torch.no_grad():
        features, record = model.backbone.forward_with_routing(x)
        logits, _ = model.sem_seg_head(features, present=record.feature_present)
    return logits, record


def _assert_same_routing(got, ref):
    assert got.cells.keys() == ref.cells.keys()
    for key, r in ref.cells.items():
        g = got.cells[key]
        assert g.dropped == r.dropped, key
        assert (g.alpha is None) == (r.alpha is None), key
        if r.alpha is not None:
            torch.testing.assert_close(g.alpha, r.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.real_flops, ref.real_flops)
    torch.testing.assert_close(got.expected_flops, ref.expected_flops)


def _assert_argmax_up_to_ties(logits, ref, tol: float = 2e-4):
    """Equal argmax wherever the reference's top two classes are more than ``tol`` apart
    (twice the logit tolerance: closer ones are float ties)."""
    differ = logits.argmax(1) != ref.argmax(1)
    top2 = ref.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    assert (margin[differ] <= tol).all(), margin[differ].max()


def _route_signature(record):
    def opened(c):
        return None if c.alpha is None else tuple((c.alpha > 0).flatten().tolist())

    return tuple((k, c.dropped, opened(c)) for k, c in sorted(record.cells.items()))


# -- no host reads ----------------------------------------------------------------------


def test_faithful_training_forward_backward_reads_nothing_back():
    model = build_model(tiny_cfg(**{"MODEL.BUDGET.CONSTRAIN": True,
                                    "MODEL.BACKBONE.DROP_PROB": 0.2})).train()
    x = _images(2, seed=1)
    targets = torch.randint(0, 19, (2, 64, 128))

    def step():
        features, record = model.backbone.forward_with_routing(x)
        _, losses = model.sem_seg_head(features, targets, record.feature_present)
        losses.update(model.budget.losses(record, step_rate=0.9))
        sum(losses.values()).backward()
        return losses

    losses, count = count_dispatch(step)
    assert "loss_budget" in losses
    assert count.host_reads == 0, count.where
    assert count.kernels > 100  # the counter sees the work


def test_faithful_eval_forward_decides_on_the_device():
    model = _routed_model(seed=1)
    pattern = GatePattern({(0, 1): ("keep", "up", "down")})  # dropped, and (1, 2) gets nothing
    apply_gate_pattern(model.backbone, pattern)
    with torch.no_grad():
        (_, record), count = count_dispatch(model.backbone.forward_with_routing, _images(2, 2))
    assert count.host_reads == 0, count.where
    cells = record.cells  # read back once, after the forward pass
    assert cells[(0, 1)].dropped and cells[(1, 2)].dropped and cells[(1, 2)].alpha is None


def test_dense_graph_plan_inference_reads_nothing_back():
    model = _routed_model(seed=2)
    copy_ = InferenceCopy(model, InferenceOptions(plan_name="graph-dense"))
    with torch.no_grad():
        copy_(_images(1, 3))  # caches filled (cost tables on the device)
        _, count = count_dispatch(copy_, _images(2, 3))
    assert count.host_reads == 0, count.where


def test_eager_conditional_plan_reads_one_predicate_vector_per_layer():
    """Eagerly the conditional plan is the documented fallback: the predicates of a layer
    come back in one transfer (init cell + routed layers), nothing else is read."""
    model = _routed_model(seed=3)
    copy_ = InferenceCopy(model, InferenceOptions(plan_name="graph-conditional"))
    with torch.no_grad():
        _, count = count_dispatch(copy_, _images(2, 4))
    layers = 1 + len(model.backbone.cell_specs)
    assert count.host_reads == layers and set(count.where) == {"tolist"}


# -- graph plans equal the faithful plan --------------------------------------------------


@pytest.mark.parametrize("plan", GRAPH_PLANS)
def test_graph_plans_equal_faithful_on_routes_that_differ_per_image(plan):
    model = _routed_model(seed=1)
    copy_ = InferenceCopy(model, InferenceOptions(plan_name=plan))
    sample = _images(1, seed=50)  # what a capture would see first
    copy_(sample)
    x = _images(6, seed=1)
    ref_logits, ref = _faithful(model, x)
    logits, _, record = copy_(x)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    _assert_argmax_up_to_ties(logits, ref_logits)
    _assert_same_routing(record, ref)
    per_image = {_route_signature(_faithful(model, x[i:i + 1])[1]) for i in range(6)}
    per_image.add(_route_signature(_faithful(model, sample)[1]))
    assert len(per_image) >= 3  # the routes do differ image by image and from the sample


@pytest.mark.parametrize("plan", GRAPH_PLANS)
def test_graph_plans_with_dropped_cells_and_cells_that_receive_nothing(plan):
    model = _routed_model(seed=5)
    pattern = GatePattern({(0, 1): ("keep", "up", "down"), (2, 0): ("keep", "up", "down")})
    apply_gate_pattern(model.backbone, pattern)
    x = _images(2, seed=6)
    ref_logits, ref = _faithful(model, x)
    logits, _, record = InferenceCopy(model, InferenceOptions(plan_name=plan))(x)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    _assert_same_routing(record, ref)
    assert record.cells[(1, 2)].alpha is None and record.cells[(2, 0)].dropped


def test_missing_coarsest_feature_is_skipped_by_the_decoder_as_on_the_host():
    """The last layer's coarsest cell receives nothing: the decoder skips it (not decodes
    zeros), with device flags as with host-side None."""
    model = _routed_model(seed=6)
    net = model.backbone
    # (1, 2) dropped: (2, 3), whose only input is its down, receives nothing; (2, 2)
    # dropped: its down is nothing too, so (3, 3) -- the coarsest feature -- gets nothing
    every = ("keep", "up", "down")
    apply_gate_pattern(net, GatePattern({(1, 2): every, (2, 2): every}))
    x = _images(2, seed=7)
    with torch.no_grad():
        features, record = net.forward_with_routing(x)
    name = list(net.output_shape())[-1]
    assert not bool(record.feature_present[name]) and torch.count_nonzero(features[name]) == 0
    with torch.no_grad():
        present = model.sem_seg_head(features, present=record.feature_present)[0]
        host = dict(features)
        host[name] = None
        skipped = model.sem_seg_head(host)[0]
        zeros = model.sem_seg_head(features)[0]
    assert torch.equal(present, skipped)
    assert not torch.equal(zeros, skipped)  # decoding the zeros would change the logits


# -- the conditional plan computes nothing of a closed path -------------------------------


def test_conditional_plan_runs_no_operator_of_a_closed_path():
    model = _routed_model(seed=7)
    closed = {(0, 1): ("keep", "up", "down"), (1, 1): ("up",), (2, 1): ("down", "keep")}
    apply_gate_pattern(model.backbone, GatePattern(closed))
    copy_ = InferenceCopy(model, InferenceOptions(plan_name="graph-conditional"))
    fired = []
    for cell in copy_.backbone.all_cells():
        key = (cell.spec.layer, cell.spec.scale)
        modules = [("ops", op) for op in cell.ops] + [(n, getattr(cell, n)) for n in ("up", "down")]
        for name, module in modules:
            if module is not None:
                module.register_forward_hook(lambda m, i, o, k=key, n=name: fired.append((k, n)))
    x = _images(2, seed=8)
    _, _, record = copy_(x)
    cells = record.cells
    for key, cell in cells.items():
        if cell.dropped:
            assert not any(k == key for k, _ in fired), key
        for path in ("up", "down"):
            if key in closed and path in closed[key] and not cell.dropped:
                assert (key, path) not in fired, (key, path)
    assert ((0, 1), "ops") not in fired and ((1, 1), "up") not in fired
    # the dense variant computes them all
    fired.clear()
    with torch.no_grad():
        copy_.backbone.forward_with_routing(copy_.cast_input(x), GraphPlan(False))
    assert ((0, 1), "ops") in fired and ((1, 1), "up") in fired
    # and the skipped work shows in the operator count
    with torch.no_grad():
        _, dense = count_dispatch(copy_.backbone.forward_with_routing, copy_.cast_input(x),
                                  GraphPlan(False))
        _, cond = count_dispatch(copy_.backbone.forward_with_routing, copy_.cast_input(x),
                                 GraphPlan(True))
    assert cond.count("convolution") < dense.count("convolution")


# -- one graph per forward ----------------------------------------------------------------


def test_training_forward_compiles_as_one_graph_with_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.BUDGET.CONSTRAIN": True})).train()
    twin = copy.deepcopy(model)
    prepare_for_training(twin, TrainingOptions(compile="eager", compile_scope="network"))
    x, targets = _images(2, seed=9), torch.randint(0, 19, (2, 64, 128))
    torch._dynamo.reset()
    grads = []
    for m in (model, twin):
        features, record = m.backbone.forward_with_routing(x)
        _, losses = m.sem_seg_head(features, targets, record.feature_present)
        losses.update(m.budget.losses(record, step_rate=0.9))
        sum(losses.values()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name
    assert twin.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("plan", GRAPH_PLANS)
def test_graph_plans_compile_as_one_graph(plan):
    """fullgraph=True: a graph break raises. The conditional plan keeps its branches as
    torch.cond in the graph (and then reads nothing back)."""
    model = _routed_model(seed=8, **{"MODEL.BACKBONE.LAYER_NUM": 3})  # fewer regions
    x = _images(2, seed=10)
    eager = InferenceCopy(model, InferenceOptions(plan_name=plan))
    compiled = InferenceCopy(model, InferenceOptions(plan_name=plan, compile="eager"))
    torch._dynamo.reset()
    ref_logits, _, ref = eager(x)
    logits, _, record = compiled(x)
    assert torch.equal(logits, ref_logits)
    _assert_same_routing(record, ref)
    if plan == "graph-conditional":
        exported = torch.export.export(_ForwardOnly(compiled), (x,))
        conds = [n for n in exported.graph.nodes if "cond" in str(n.target)]
        assert conds, "the conditional plan has no conditional in its graph"


@pytest.mark.parametrize("plan", GRAPH_PLANS)
def test_a_network_alone_on_a_graph_plan_runs_as_one_program(plan):
    """The copy of a routed network alone (what panoptic, instance and classification
    models run in eval mode) is one program too: compiled with fullgraph=True (a graph
    break raises) it gives the eager copy's features and record, and the dense plan reads
    nothing back."""
    model = _routed_model(seed=8, **{"MODEL.BACKBONE.LAYER_NUM": 3})
    x = _images(2, seed=11)
    eager = InferenceCopy(model.backbone, InferenceOptions(plan_name=plan))
    compiled = InferenceCopy(model.backbone, InferenceOptions(plan_name=plan, compile="eager"))
    assert eager.program is not None and compiled.program is not None
    torch._dynamo.reset()
    ref_features, ref = eager._run(x)  # the plan run step by step, outside the program
    features, record = compiled(x)
    assert features.keys() == ref_features.keys()
    for name, f in ref_features.items():
        assert torch.equal(features[name], f), name
    _assert_same_routing(record, ref)
    with torch.no_grad():
        _, faithful = model.backbone.forward_with_routing(x)
    _assert_same_routing(record, faithful)
    if plan == "graph-dense":
        with torch.no_grad():
            _, count = count_dispatch(eager, x)
        assert count.host_reads == 0, count.where


class _ForwardOnly(torch.nn.Module):
    def __init__(self, copy_):
        super().__init__()
        self.copy = copy_

    def forward(self, x):
        return self.copy.graph_forward(x)[0]


# -- dtype discipline, checkpointing, faithful gate ---------------------------------------


def test_bf16_training_creates_no_float32_activation_in_the_cells():
    model = build_model(tiny_cfg()).train()
    x = _images(2, seed=11)
    net = model.backbone
    smallest = min(2 * s.channels * (64 // s.stride) * (128 // s.stride)
                   for s in net.output_shape().values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stem_out = net.stem(x)
        with _Float32Watch(smallest) as watch:
            keep = _run_cells(net, stem_out)
    assert keep.dtype == torch.bfloat16
    assert watch.ops > 100 and watch.hits == [], watch.hits[:10]


class _Float32Watch(torch.utils._python_dispatch.TorchDispatchMode):
    """Records operators that create float32 tensors of at least ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.hits, self.ops = numel, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= self.numel:
                self.hits.append(func.overloadpacket.__name__)
        return out


def _run_cells(net, stem_out):
    """The routed cells (init cell onwards) of the faithful plan on a stem output."""
    from dyn_seg.modeling.execution.plans import sum_inputs

    outputs = {(-1, 0): net.init_cell(stem_out)}
    for specs, cells in zip(net.cell_specs, net.cells):
        for spec, cell in zip(specs, cells):
            summed, present = sum_inputs(spec, outputs)
            outputs[(spec.layer, spec.scale)] = cell(summed, 0.0, 0.0, present)
    return outputs[(len(net.cell_specs) - 1, 0)].keep


def test_checkpointed_training_gives_the_same_gradients():
    torch.manual_seed(1)
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.DROP_PROB": 0.3})).train()
    model.backbone.step_rate = 0.8  # drop path active: the recomputation replays its masks
    twin = copy.deepcopy(model)
    prepare_for_training(twin, TrainingOptions(checkpoint=True))
    x, targets = _images(2, seed=12), torch.randint(0, 19, (2, 64, 128))
    grads = []
    for m in (model, twin):
        torch.manual_seed(7)
        features, record = m.backbone.forward_with_routing(x)
        _, losses = m.sem_seg_head(features, targets, record.feature_present)
        (losses["loss_sem_seg"] + record.expected_flops.mean()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


def test_faithful_gate_is_pooling_and_a_1x1_convolution_bitwise_near_thresholds():
    """Gates whose pre-activations sit within rounding of 0 (the max(0, tanh) threshold):
    the faithful gate equals average pooling + a 1x1 convolution bit for bit, gradients
    included; the inference copies' linear-map tail (another summation order) does not,
    which is why it stays out of the faithful plan."""
    torch.manual_seed(2)
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.INIT_CHANNEL": 64})).train()
    gate = model.backbone.cells[0][0].gate
    x = torch.randn(4, gate.reduce.weight.shape[1], 16, 16)
    with torch.no_grad():  # bias so that every pre-activation is ~0 (float64 arithmetic)
        pooled = F.adaptive_avg_pool2d(gate.reduce(x).double(), 1).flatten(1)
        z = pooled @ gate.proj.weight.double().flatten(1).T
        gate.proj.bias.copy_(-z.mean(0).float())
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out = gate(xs[0])
    pooled = F.adaptive_avg_pool2d(gate.reduce(xs[1]).float(), 1)
    ref = F.relu(torch.tanh(F.conv2d(pooled, gate.proj.weight, gate.proj.bias))).flatten(1)
    assert torch.equal(out, ref)
    w = torch.randn_like(out)
    g_out = torch.autograd.grad((out * w).sum(), [xs[0], gate.proj.weight])
    g_ref = torch.autograd.grad((ref * w).sum(), [xs[1], gate.proj.weight])
    assert all(torch.equal(a, b) for a, b in zip(g_out, g_ref))
    assert ((out > 0) != (out == 0)).all() and (out == 0).any() and (out > 0).any()
    with torch.no_grad():
        fast = gate._fast_tail(gate.reduce(x))
    assert not torch.equal(fast, out.detach())  # the other order moves bits here
