"""The fast paths compute what the faithful eager path computes (fp32 within 1e-4)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from routed_helpers import routed_tiny_model, varied_images
from torch import nn

from dyn_seg.benchmark import (
    GatePattern,
    apply_gate_pattern,
    calibrate_batch_norm,
    random_gate_pattern,
)
from dyn_seg.modeling.execution.plans import plan_cell
from dyn_seg.modeling.meta_arch.training import prepare_for_training
from dyn_seg.modeling.network.transforms import (
    FastInference,
    InferenceCopy,
    InferenceOptions,
    TrainingOptions,
    fold_conv,
)
from dyn_seg.modeling.routing.cell import GATE_EPS

ATOL = 1e-4


_images = varied_images
_model = routed_tiny_model


def _faithful(model, x):
    with torch.no_grad():
        features, routing = model.backbone.forward_with_routing(x)
        return model.sem_seg_head(features, present=routing.feature_present)[0], features, routing


def _assert_same(model, x, options: InferenceOptions, atol: float = ATOL):
    ref_logits, ref_features, ref_routing = _faithful(model, x)
    logits, features, routing = InferenceCopy(model, options)(x)
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
    assert features.keys() == ref_features.keys()
    for name, ref in ref_features.items():
        assert bool(routing.feature_present[name]) == bool(ref_routing.feature_present[name])
        torch.testing.assert_close(features[name], ref, atol=atol, rtol=0)
    assert routing.cells.keys() == ref_routing.cells.keys()
    for key, ref in ref_routing.cells.items():
        got = routing.cells[key]
        assert got.dropped == ref.dropped, key
        assert (got.alpha is None) == (ref.alpha is None), key
        if ref.alpha is not None:
            torch.testing.assert_close(got.alpha, ref.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(routing.real_flops, ref_routing.real_flops)
    torch.testing.assert_close(routing.expected_flops, ref_routing.expected_flops)
    assert routing.stem_flops == ref_routing.stem_flops
    return ref_routing


def _mixed_cells(routing) -> int:
    """Cells where some images run the operations and others keep their input."""
    count = 0
    for cell in routing.cells.values():
        if cell.alpha is not None and not cell.dropped:
            shut = cell.alpha.sum(dim=1) < GATE_EPS
            paths_differ = ((cell.alpha > 0).any(0) != (cell.alpha > 0).all(0)).any()
            count += int(bool(shut.any() and not shut.all()) or bool(paths_differ))
    return count


# -- folding -------------------------------------------------------------------------------


def _randomise_norm(norm: nn.Module) -> None:
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("norm_name", ["BN", "FrozenBN", "GN"])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_conv_equals_conv_norm_relu(norm_name, bias):
    from detectron2.layers import get_norm

    torch.manual_seed(0)
    conv = Conv2d(32, 32, 3, padding=1, bias=bias, norm=get_norm(norm_name, 32),
                  activation=F.relu).eval()
    if norm_name != "GN":
        _randomise_norm(conv.norm)
    x = torch.randn(2, 32, 9, 11)
    folded = fold_conv(conv)
    assert (folded is conv) == (norm_name == "GN")  # GroupNorm cannot be folded
    with torch.no_grad():
        torch.testing.assert_close(folded(x), conv(x), atol=1e-5, rtol=1e-5)


def test_folding_keeps_the_source_module_unchanged():
    model = build_model(tiny_cfg()).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy_ = InferenceCopy(model)
    conv = model.backbone.stem.stem_1
    assert conv.training and conv.norm.training and conv.norm is not None
    assert copy_.backbone.stem.stem_1 is not conv and not copy_.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_frozen_batch_norm_folds_like_batch_norm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    _randomise_norm(bn)
    frozen = FrozenBatchNorm2d(4, eps=bn.eps)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, name).copy_(getattr(bn, name).detach())
    a_conv = Conv2d(4, 4, 1, norm=bn)
    b_conv = Conv2d(4, 4, 1, norm=frozen)
    b_conv.load_state_dict(a_conv.state_dict(), strict=False)
    a, b = fold_conv(a_conv), fold_conv(b_conv)
    assert a is not a_conv and b is not b_conv
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


# -- planning ------------------------------------------------------------------------------


def test_plan_drops_cell_when_batch_activations_sum_below_eps():
    plan = plan_cell([[0.0, 2e-5], [3e-5, 0.0]], ("keep", "down"), batch=2)
    assert plan.dropped


def test_plan_keeps_tiny_activations_that_the_faithful_path_multiplies():
    # image 0 is shut (sum < eps) but its keep activation is above 0: alpha * act counts
    plan = plan_cell([[5e-5, 0.0], [0.5, 0.5]], ("keep", "down"), batch=2)
    assert not plan.dropped
    assert plan.shut_rows == [0]
    assert plan.ops_rows is None
    assert plan.path_rows == {"keep": None, "down": [1]}


def test_plan_runs_operations_only_for_images_with_an_open_path():
    alpha = [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.7]]
    plan = plan_cell(alpha, ("keep", "up", "down"), batch=3)
    assert plan.ops_rows == [1, 2]
    assert plan.path_rows == {"keep": [1], "up": [], "down": [2]}
    assert plan.shut_rows == [0]


def test_plan_without_per_image_routing_keeps_whole_batches():
    alpha = [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.7]]
    plan = plan_cell(alpha, ("keep", "up", "down"), batch=3, per_image_routing=False)
    assert plan.ops_rows is None
    assert plan.path_rows == {"keep": None, "up": [], "down": None}
    dense = plan_cell(alpha, ("keep", "up", "down"), batch=3, skip_closed_paths=False,
                      per_image_routing=False)
    assert dense.path_rows == {"keep": None, "up": None, "down": None}


def test_plan_without_gates_runs_everything():
    plan = plan_cell(None, ("keep", "up"), batch=4)
    assert not plan.dropped and plan.ops_rows is None and plan.shut_rows == []


def test_per_image_routing_needs_skipping_closed_paths():
    with pytest.raises(ValueError, match="SKIP_CLOSED_PATHS"):
        InferenceOptions(skip_closed_paths=False, per_image_routing=True)


# -- whole network -------------------------------------------------------------------------

VARIANTS = {
    "default": InferenceOptions(),
    "nchw": InferenceOptions(channels_last=False),
    "unfolded": InferenceOptions(fold_bn=False),
    "whole_batch_skipping": InferenceOptions(per_image_routing=False),
    "no_skipping": InferenceOptions(skip_closed_paths=False, per_image_routing=False),
}


@pytest.fixture(scope="module")
def routed_model():
    return _model(seed=0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fast_path_equals_faithful_on_batch_with_different_routes(routed_model, name):
    x = _images(6, seed=1)
    ref_routing = _assert_same(routed_model, x, VARIANTS[name])
    assert _mixed_cells(ref_routing) >= 2  # the batch really routes images differently


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_static_module_runs_in_the_copys_memory_layout(routed_model, channels_last):
    # sub-batches of images that take different routes keep the layout: a convolution fed
    # the other one converts (or picks slower kernels) on every call
    from dyn_seg.modeling.network.transforms import static_modules

    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = InferenceCopy(routed_model, InferenceOptions(channels_last=channels_last))
    seen = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].is_contiguous(memory_format=layout)))
        for m in static_modules(net.backbone)]
    try:
        _, _, routing = net(_images(6, seed=1))
    finally:
        for h in hooks:
            h.remove()
    assert _mixed_cells(routing) >= 2  # sub-batches were formed
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} calls in another layout"


def test_fast_path_equals_faithful_image_by_image(routed_model):
    x = _images(6, seed=1)
    for i in range(x.shape[0]):
        _assert_same(routed_model, x[i:i + 1], InferenceOptions())


def test_fast_path_equals_faithful_with_all_gates_open():
    model = _model(seed=2)
    apply_gate_pattern(model.backbone, GatePattern())
    routing = _assert_same(model, _images(2, seed=3), InferenceOptions())
    assert not any(c.dropped for c in routing.cells.values())


@pytest.mark.parametrize("unit", ["path", "cell"])
def test_fast_path_equals_faithful_with_forced_closed_gates(unit):
    model = _model(seed=3)
    pattern = random_gate_pattern(model.backbone, 0.5, unit=unit, seed=4)
    apply_gate_pattern(model.backbone, pattern)
    routing = _assert_same(model, _images(2, seed=5), InferenceOptions())
    assert any(c.dropped for c in routing.cells.values()) or unit == "path"


def test_cell_whose_inputs_are_all_closed_paths_still_runs_on_zeros():
    # (1, 0) reads (0, 0) keep and (0, 1) up, (1, 2) reads only (0, 1) down: all closed.
    # Both receive zero tensors (not nothing): they run their gates on zeros, as faithful.
    model = _model(seed=4)
    pattern = GatePattern({(0, 0): ("keep",), (0, 1): ("up", "down")})
    apply_gate_pattern(model.backbone, pattern)
    routing = _assert_same(model, _images(2, seed=6), InferenceOptions())
    for key in [(0, 0), (0, 1), (1, 0), (1, 2)]:
        assert not routing.cells[key].dropped and routing.cells[key].alpha is not None


def test_cell_whose_inputs_are_all_nothing_is_dropped():
    # (0, 1) closes every path: it is dropped (keep = X, up and down are nothing), so
    # (1, 2), whose only input is (0, 1) down, receives nothing and is dropped without gate
    model = _model(seed=5)
    pattern = GatePattern({(0, 1): ("keep", "up", "down")})
    apply_gate_pattern(model.backbone, pattern)
    routing = _assert_same(model, _images(2, seed=7), InferenceOptions())
    assert routing.cells[(0, 1)].dropped and routing.cells[(0, 1)].alpha is not None
    assert routing.cells[(1, 2)].dropped and routing.cells[(1, 2)].alpha is None


def test_fast_path_equals_faithful_without_gates():
    model = _model(seed=6, **{"MODEL.GATE.GATE_ON": False})
    _assert_same(model, _images(3, seed=8), InferenceOptions())


def test_fast_path_equals_faithful_with_small_gates_and_other_operations():
    model = _model(seed=7, **{"MODEL.GATE.SMALL_GATE": True,
                              "MODEL.BACKBONE.CELL_TYPE": ["sep_conv_5x5", "MBConv_3x3",
                                                           "skip_connect"]})
    _assert_same(model, _images(3, seed=9), InferenceOptions())


def test_bf16_fast_path_agrees_on_argmax():
    # a random model whose logits are not near-ties everywhere: the seed-0 model's top-2
    # margin is ~0.09 at the median, where bf16's ~0.4% rounding flips argmax by chance
    model = _model(seed=3)
    x = _images(2, seed=10)
    ref_logits, _, _ = _faithful(model, x)
    margin = ref_logits.topk(2, dim=1).values.diff(dim=1).abs().median()
    assert margin > 0.2, margin
    logits, _, _ = InferenceCopy(model, InferenceOptions(bf16=True))(x)
    assert logits.dtype == torch.float32
    agreement = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
    assert agreement >= 0.97, agreement


def test_compiled_fast_path_equals_faithful(routed_model):
    # the "eager" backend traces every compiled module through torch.compile quickly
    _assert_same(routed_model, _images(2, seed=11), InferenceOptions(compile="eager"))


def test_compiled_static_modules_each_keep_their_own_compiled_code(routed_model):
    # torch.compile keeps at most `recompile_limit` (8) versions per code object; the static
    # modules of one class (dozens of convolutions) must not share one, or all but the first
    # few shapes silently run eagerly. Each kind of module (same configuration) has its own:
    # here a kind sees at most 4 versions (batch 2, then any batch; two memory layouts),
    # one class sees many more. With the limit made an error, a shared cache fails.
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):
        net = InferenceCopy(routed_model, InferenceOptions(compile="eager"))
        x = _images(2, seed=11)
        net(x)
        net(x[:1])
    torch._dynamo.reset()


def test_modules_share_compiled_code_by_kind_except_with_cuda_graphs():
    from dyn_seg.modeling.network.transforms import _compile_kind

    a, b, c = nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 3)
    assert _compile_kind(a, "inductor", "default") == _compile_kind(b, "inductor", "default")
    assert _compile_kind(a, "inductor", "default") != _compile_kind(c, "inductor", "default")
    # a CUDA graph records its weights' addresses: one per module
    assert (_compile_kind(a, "inductor", "reduce-overhead")
            != _compile_kind(b, "inductor", "reduce-overhead"))


def test_fast_network_is_inference_only(routed_model):
    net = InferenceCopy(routed_model)
    with pytest.raises(RuntimeError, match="inference only"):
        net.train()


# -- meta-architecture hook ----------------------------------------------------------------


def _inputs(x: torch.Tensor, model) -> list:
    mean, std = model.pixel_mean, model.pixel_std
    return [{"image": img * std + mean} for img in x]


def test_segmentor_uses_fast_path_when_enabled_and_matches_faithful():
    model = _model(seed=8, **{"MODEL.FAST.ENABLED": True})
    assert isinstance(model.fast_inference, FastInference)
    inputs = _inputs(_images(3, seed=12, size=(60, 120)), model)  # padded to 64 x 128
    with torch.no_grad():
        out = model(inputs)
        fast, model.fast_inference = model.fast_inference, None
        ref = model(inputs)
        model.fast_inference = fast
    for a, b in zip(ref, out):
        assert b["sem_seg"].shape == a["sem_seg"].shape == (19, 60, 120)
        torch.testing.assert_close(b["sem_seg"], a["sem_seg"], atol=ATOL, rtol=0)
        assert b["flops"] == pytest.approx(a["flops"], rel=1e-6)
        assert a["routing"].keys() == b["routing"].keys()
        for key in a["routing"]:
            torch.testing.assert_close(b["routing"][key], a["routing"][key], atol=1e-5, rtol=0)


def test_fast_path_is_on_by_default_and_can_be_switched_off():
    assert isinstance(build_model(tiny_cfg()).fast_inference, FastInference)
    assert build_model(tiny_cfg(**{"MODEL.FAST.ENABLED": False})).fast_inference is None


def test_segmentor_fast_copy_follows_weight_changes():
    model = _model(seed=9, **{"MODEL.FAST.ENABLED": True})
    inputs = _inputs(_images(1, seed=13), model)
    with torch.no_grad():
        first = model(inputs)[0]["sem_seg"]
        cached = model.fast_inference.inference_copy(model)
        assert model.fast_inference.inference_copy(model) is cached  # unchanged weights: reused
        model.sem_seg_head.predictor.bias.add_(1.0)
        second = model(inputs)[0]["sem_seg"]
    assert model.fast_inference.inference_copy(model) is not cached
    torch.testing.assert_close(second, first + 1.0, atol=ATOL, rtol=0)


def test_segmentor_trains_on_faithful_path_when_fast_enabled():
    model = build_model(tiny_cfg(**{"MODEL.FAST.ENABLED": True})).train()
    batch = [{"image": torch.rand(3, 64, 64) * 255, "sem_seg": torch.zeros(64, 64).long()}]
    losses = model(batch)
    losses["loss_sem_seg"].backward()
    assert model.backbone.init_cell.gate.proj.weight.grad is not None


# -- training helpers ----------------------------------------------------------------------


def test_prepared_training_model_gives_the_same_loss_and_state_dict_keys():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = [{"image": torch.rand(3, 64, 64) * 255, "sem_seg": torch.randint(0, 19, (64, 64))}
             for _ in range(2)]
    prepared = copy.deepcopy(model)
    options = TrainingOptions(channels_last=True, compile="eager")
    prepare_for_training(prepared, options)
    assert prepared.state_dict().keys() == model.state_dict().keys()
    assert model.backbone.stem.stem_1.weight.is_contiguous()
    assert prepared.backbone.stem.stem_1.weight.is_contiguous(memory_format=torch.channels_last)
    ref = model(batch)["loss_sem_seg"]
    loss = prepared(batch)["loss_sem_seg"]
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    loss.backward()
    assert prepared.backbone.init_cell.gate.proj.weight.grad is not None


# -- gate patterns -------------------------------------------------------------------------


def test_gate_pattern_closes_the_chosen_share_and_opens_the_rest():
    model = build_model(tiny_cfg()).eval()
    net = model.backbone
    total = sum(len(s.paths) for layer in net.cell_specs for s in layer)
    pattern = random_gate_pattern(net, 0.5, unit="path", seed=0)
    assert pattern.num_closed() == round(0.5 * total)
    assert pattern == random_gate_pattern(net, 0.5, unit="path", seed=0)
    apply_gate_pattern(net, pattern)
    _, routing = net.forward_with_routing(torch.randn(2, 3, 64, 64))
    for (layer, scale), cell in routing.cells.items():
        if cell.alpha is None:
            continue
        spec = net.init_spec if layer < 0 else net.cell_specs[layer][scale]
        closed = pattern.closed.get((layer, scale), ())
        for k, path in enumerate(spec.paths):
            expected = 0.0 if path in closed else float(torch.tanh(torch.tensor(8.0)))
            assert torch.all(cell.alpha[:, k] == expected)


def test_cell_gate_pattern_closes_whole_cells():
    net = build_model(tiny_cfg()).backbone
    pattern = random_gate_pattern(net, 0.25, unit="cell", seed=1)
    cells = [s for layer in net.cell_specs for s in layer]
    assert len(pattern.closed) == round(0.25 * len(cells))
    for (layer, scale), paths in pattern.closed.items():
        assert paths == net.cell_specs[layer][scale].paths


def test_calibration_sets_running_statistics_and_restores_modes():
    model = build_model(tiny_cfg()).eval()
    bn = model.backbone.stem.stem_1.norm
    n = calibrate_batch_norm(model, lambda b: model.backbone(b), [torch.randn(2, 3, 64, 64)])
    assert n > 0 and not model.training and bn.momentum == 0.1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


# -- bf16 training ------------------------------------------------------------------------


def _block_scenes(n: int, seed: int):
    """Images of coloured 8x8-pixel blocks whose class is their colour (learnable)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 4, (n, 8, 8), generator=g)
    colours = torch.tensor([[40.0, 40, 40], [220, 40, 40], [40, 220, 40], [40, 40, 220]])
    images = colours[classes].permute(0, 3, 1, 2)  # (n, 3, 8, 8)
    images = F.interpolate(images, scale_factor=8, mode="nearest")
    images = images + torch.randn(images.shape, generator=g) * 20
    labels = F.interpolate(classes[:, None].float(), scale_factor=8, mode="nearest")
    return [{"image": im, "sem_seg": lb[0].long()} for im, lb in zip(images, labels)]


def _loss_curve(model, batch, steps, bf16=False):
    """SGD steps; ``bf16``: forward under bfloat16 autocast, as detectron2's AMPTrainer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    curve = []
    for step in range(steps):
        model.step_rate = step / steps
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        curve.append(float(losses["loss_sem_seg"].detach()))
    return curve


def test_bf16_training_tracks_the_float32_loss_curve():
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4, "MODEL.BUDGET.CONSTRAIN": True})
    model = build_model(cfg).train()
    bf16 = copy.deepcopy(model)
    seen = []
    bf16.backbone.stem.stem_1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = _block_scenes(2, seed=3)
    torch.manual_seed(1)
    ref = _loss_curve(model, batch, 30)
    torch.manual_seed(1)
    low = _loss_curve(bf16, batch, 30, bf16=True)
    assert ref[-1] < 0.7 * ref[0]  # the network learns ...
    assert low[-1] < 0.7 * low[0]  # ... in bfloat16 too
    for a, b in zip(ref, low):  # and the curves stay together (within 2% at every step)
        assert abs(a - b) <= 0.02 * a
    assert set(seen) == {torch.bfloat16}  # the convolutions really ran in bfloat16
    for p in bf16.parameters():
        assert p.dtype == torch.float32  # autocast keeps float32 master weights
