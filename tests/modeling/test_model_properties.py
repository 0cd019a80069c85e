"""Behaviour of the network under any valid routing space and any closed gates."""
from __future__ import annotations

import pytest
import torch
from conftest import routing_spaces, tiny_cfg
from detectron2.modeling import build_model
from hypothesis import given, settings
from hypothesis import strategies as st

from dyn_seg.modeling import RoutingCell, known_operations
from dyn_seg.modeling.cost.budget import budget_loss, budget_weight
from dyn_seg.modeling.routing.space import build_routing_space

IMAGE = torch.rand(3, 64, 64) * 255


def _build(**overrides):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**overrides)).eval()


def _force(cell: RoutingCell, bias: float, paths=None) -> None:
    """Force a cell's gate (all paths, or the given path indices) open (+8) or shut (-8) for
    every image, whatever its input."""
    with torch.no_grad():
        idx = list(range(cell.gate.proj.out_channels)) if paths is None else paths
        cell.gate.proj.weight[idx] = 0
        cell.gate.proj.bias[idx] = bias


def _close(cell: RoutingCell, paths=None) -> None:
    _force(cell, -8.0, paths)


def _run(model, image=IMAGE):
    with torch.no_grad():
        return model([{"image": image}])[0]


@settings(max_examples=12, deadline=None)
@given(routing_spaces(5), st.booleans())
def test_any_valid_routing_space_builds_and_runs(space, small_gate):
    layer_num, counts = space
    model = _build(**{"MODEL.BACKBONE.LAYER_NUM": layer_num,
                      "MODEL.BACKBONE.CELL_NUM_LIST": counts,
                      "MODEL.GATE.SMALL_GATE": small_gate,
                      "MODEL.SEM_SEG_HEAD.IN_FEATURES": [f"layer_{i}" for i in range(counts[-1])]})
    out = _run(model, torch.rand(3, 40, 52) * 255)
    assert out["sem_seg"].shape == (19, 40, 52) and torch.isfinite(out["sem_seg"]).all()
    model.train()
    losses = model([{"image": IMAGE, "sem_seg": torch.randint(0, 19, (64, 64))}] * 2)
    assert torch.isfinite(losses["loss_sem_seg"])


@settings(max_examples=6, deadline=None)
@given(st.data())
def test_closing_gates_keeps_outputs_finite_and_flops_monotone(data):
    # Gates react to their input, so closing one cell can open a gate downstream; with every
    # gate first forced open, closing more paths must never add FLOPs.
    model = _build()
    cells = model.backbone.all_cells()
    for cell in cells:
        _force(cell, 8.0)
    order = data.draw(st.permutations(range(len(cells))))
    previous = _run(model)["flops"]
    for k in order[: data.draw(st.integers(1, 5))]:
        cell = cells[k]
        paths = data.draw(st.one_of(
            st.none(), st.lists(st.integers(0, cell.spec.num_paths - 1), min_size=1, unique=True)
        ))
        _close(cell, paths)
        out = _run(model)
        assert torch.isfinite(out["sem_seg"]).all()
        assert out["flops"]["real"] <= previous["real"] + 1e-9
        assert out["flops"]["expected"] <= previous["expected"] + 1e-9
        previous = out["flops"]


@pytest.mark.parametrize("op", known_operations())
def test_every_cell_operation_builds_and_runs(op):
    model = _build(**{"MODEL.BACKBONE.CELL_TYPE": [op, "skip_connect"],
                      "MODEL.BACKBONE.LAYER_NUM": 3})
    assert torch.isfinite(_run(model)["sem_seg"]).all()


def test_network_fix_has_no_gates_and_counts_every_path():
    from dyn_seg.modeling.meta_arch.analysis import all_open_flops

    model = _build(**{"MODEL.GATE.GATE_ON": False})
    assert not any("gate" in n for n, _ in model.named_parameters())
    dynamic = _build()
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in dynamic.parameters())
    out = _run(model)
    every_path = all_open_flops(model, (64, 64))
    assert every_path["gates"] == 0
    assert out["flops"]["expected"] * 1e3 == pytest.approx(every_path["expected"], rel=1e-6)
    assert out["flops"]["real"] * 1e3 == pytest.approx(every_path["real"], rel=1e-6)


def test_small_gate_runs_on_tiny_images():
    model = _build(**{"MODEL.GATE.SMALL_GATE": True})
    for h, w in [(1, 1), (7, 300), (33, 31)]:
        assert _run(model, torch.rand(3, h, w) * 255)["sem_seg"].shape == (19, h, w)


def test_closed_cell_passes_its_input_through_per_image():
    _, layers = build_routing_space(3, [2, 3, 4], 8)
    cell = RoutingCell(layers[1][1], ["sep_conv_3x3", "skip_connect"], "BN").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        cell.gate.proj.weight.zero_()
        cell.gate.proj.bias.fill_(-8.0)
        out = cell(x)
    # dropped on the device: keep = X, up and down are nothing (absent and exactly zero)
    assert bool(out.dropped) and torch.equal(out.keep, x)
    assert out.presence("up") is not True and not bool(out.presence("up"))
    assert torch.count_nonzero(out.up) == 0 and torch.count_nonzero(out.down) == 0
    cell.train()  # training never drops the cell, the identity is per image
    out = cell(x)
    assert not out.dropped and torch.equal(out.keep, x)
    assert torch.count_nonzero(out.up) == 0 and torch.count_nonzero(out.down) == 0


def test_closed_cell_is_skipped_at_inference():
    model = _build()
    cell = model.backbone.cells[2][1]
    _close(cell)
    calls = []
    cell.ops[0].register_forward_hook(lambda *a: calls.append(1))
    out = _run(model)
    assert not calls
    assert torch.isfinite(out["sem_seg"]).all()
    assert out["routing"][(2, 1)].sum() == 0


def test_budget_loss_schedule():
    flops = torch.tensor([5.0, 7.0], requires_grad=True)
    kw = dict(flops_all=100.0, mu=0.1, loss_weight=0.5, unupdate_rate=0.4, warm_up=True)
    assert budget_loss(flops, step_rate=0.39, **kw) is None
    assert budget_weight(0.41, 0.4, True) == pytest.approx(0.5)
    assert budget_weight(0.5, 0.4, True) == 1.0
    assert budget_weight(0.4, 0.4, False) == 1.0
    full = budget_loss(flops, step_rate=0.9, **kw)
    assert full.item() == pytest.approx(0.5 * (0.06 - 0.1) ** 2)
    full.backward()
    assert flops.grad is not None and torch.isfinite(flops.grad).all()
    zero = budget_loss(torch.zeros(2), step_rate=0.9, **kw)
    assert zero.item() == pytest.approx(0.5 * 0.01)


def test_bf16_autocast_forward_runs():
    model = _build()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(model)
    assert torch.isfinite(out["sem_seg"].float()).all()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([{"image": IMAGE, "sem_seg": torch.randint(0, 19, (64, 64))}] * 2)
    losses["loss_sem_seg"].backward()
