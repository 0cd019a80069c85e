"""Routing statistics, routing figures, the visualisation tool and per-layer gate logging."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dyn_seg.modeling.routing.space import build_routing_space
from dyn_seg.tools import visualize_routing
from dyn_seg.visualization.routing import (
    collect_routing_stats,
    draw_image_route,
    draw_routing,
    min_route_width,
    overlay_route,
    render_route,
)

SHUT_CELL = (0, 1)  # layer 0, scale 1/8: keep, up and down
ORPHAN_CELL = (1, 2)  # its only input is SHUT_CELL's down path


def _space():
    """The tiny config's routing space: 4 layers of [2, 3, 4, 4] cells."""
    return build_routing_space(4, [2, 3, 4, 4], 8)


def _all_alphas(value: float):
    init, layers = _space()
    return {(s.layer, s.scale): torch.full((s.num_paths,), value)
            for s in [init] + [c for layer in layers for c in layer]}


def _set_gate(model, key, weight: float, bias: float) -> None:
    backbone = model.backbone
    cell = backbone.init_cell if key[0] < 0 else backbone.cells[key[0]][key[1]]
    torch.nn.init.constant_(cell.gate.proj.weight, weight)
    torch.nn.init.constant_(cell.gate.proj.bias, bias)


def _write_images(folder, count: int, size=(64, 128)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"frame_{i}.png"), cv2.GaussianBlur(image, (7, 7), 2))
    return folder


def _write_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_cfg().dump())
    return path


def test_stats_count_rates_mean_alpha_and_dropped_cells():
    first = _all_alphas(0.5)
    first[(2, 3)] = torch.zeros(2)  # both paths closed: dropped for this image
    second = _all_alphas(0.25)
    del second[(3, 1)]  # no entry: received nothing
    outputs = [{"routing": first, "flops": {"real": 2.0, "expected": 1.0}},
               {"routing": second, "flops": {"real": 4.0, "expected": 3.0}}]
    stats = collect_routing_stats(iter(outputs), _space())

    assert stats.num_images == 2
    assert stats.path_rate(0, 0, "down") == 1.0
    assert stats.path_mean_alpha(0, 0, "down") == pytest.approx(0.375)
    assert stats.path_rate(2, 3, "keep") == 0.5
    assert stats.path_mean_alpha(2, 3, "keep") == pytest.approx(0.125)
    assert stats.path_rate(3, 1, "keep") == 0.5
    assert stats.dropped(2, 3) == 1 and stats.dropped(3, 1) == 1 and stats.dropped(1, 1) == 0
    assert stats.passed_through(2, 3) == 1  # it received open paths and handed them on
    assert stats.passed_through(3, 1) == 0
    assert stats.layer_active_rate(3) == pytest.approx(7 / 8)  # 4 cells x 2 images
    assert stats.layer_active_rate(2) == pytest.approx(1 - 2 / 20)
    assert stats.layer_active_rate(1) == 1.0
    summary = stats.to_dict()
    assert summary["dropped_total"] == 2
    assert summary["gflops"]["real"] == {"mean": 3.0, "min": 2.0, "max": 4.0}
    assert [entry["layer"] for entry in summary["layers"]] == [-1, 0, 1, 2, 3]
    json.dumps(summary)


def test_dropped_cell_without_open_input_hands_nothing_on():
    routing = _all_alphas(0.0)
    routing[(-1, 0)] = torch.tensor([0.0, 0.9])  # init cell: only down open
    stats = collect_routing_stats([{"routing": routing}], _space())
    assert stats.passed_through(0, 1) == 1  # got the init cell's down path
    assert stats.passed_through(0, 0) == 0  # got only the closed keep path (zeros)
    assert stats.passed_through(1, 1) == 1  # got (0, 1)'s handed-on input through keep
    assert stats.passed_through(1, 2) == 0


def test_stats_reject_routing_of_another_space():
    routing = _all_alphas(0.5)
    routing[(1, 1)] = torch.ones(2)
    with pytest.raises(ValueError, match=r"cell \(1, 1\) has 2 activations"):
        collect_routing_stats([{"routing": routing}], _space())


def test_figures_are_valid_pngs(tmp_path):
    stats = collect_routing_stats([{"routing": _all_alphas(0.7)}], _space())
    route = cv2.imread(draw_routing(stats, str(tmp_path / "a" / "routing.png")))
    assert route is not None and route.shape[0] > 250 and route.shape[1] > 500
    image = np.zeros((40, 80, 3), np.uint8)
    pair = cv2.imread(draw_image_route(image, _all_alphas(0.7), str(tmp_path / "one.png"),
                                       routing_space=_space()))
    assert pair is not None and pair.shape[1] > route.shape[1] * 0.9
    with pytest.raises(ValueError, match="BGR image"):
        draw_image_route(image[..., 0], _all_alphas(0.7), str(tmp_path / "x.png"),
                         routing_space=_space())


def test_route_thumbnail_has_the_asked_width_and_shows_shut_paths():
    open_route = render_route(_all_alphas(0.9), routing_space=_space(), width=200)
    assert open_route.dtype == np.uint8 and open_route.shape[1] == 200 and open_route.shape[2] == 3
    assert 40 < open_route.shape[0] < 200
    assert (open_route < 128).any()  # open paths drawn dark on the white background
    shut = _all_alphas(0.9)
    shut[SHUT_CELL] = torch.zeros(3)
    changed = render_route(shut, routing_space=_space(), width=200) != open_route
    assert changed.any() and changed.mean() < 0.5  # only around the shut cell
    with pytest.raises(ValueError, match="at least 16 pixels"):
        render_route(shut, routing_space=_space(), width=8)


def test_route_overlay_changes_only_the_bottom_right_corner():
    image = np.full((120, 300, 3), 40, np.uint8)
    out = overlay_route(image, _all_alphas(0.9), routing_space=_space(), fraction=0.5, margin=4)
    assert out.shape == image.shape and (image == 40).all()  # the input is not modified
    rows, cols = np.nonzero((out != image).any(axis=2))
    assert (cols.min(), cols.max(), rows.max()) == (300 - 4 - 150 - 2, 300 - 4 - 1, 120 - 4 - 1)
    assert rows.min() > 0  # the route keeps its aspect ratio, lower than the image
    # too small an image for a legible route: the route goes into a white band below it,
    # at least min_route_width wide, with the image's pixels unchanged above
    for small in (image[:40], np.zeros((10, 10, 3), np.uint8)):
        out = overlay_route(small, _all_alphas(0.9), routing_space=_space(), fraction=0.5)
        h, w = small.shape[:2]
        assert out.shape[0] > h and out.shape[1] >= max(w, min_route_width(_space()))
        assert (out[:h, :w] == small).all()
        band = out[h:]
        cols = np.nonzero((band != 255).any(axis=(0, 2)))[0]
        assert cols.max() - cols.min() + 1 >= min_route_width(_space()) + 2


def test_route_thumbnail_names_scales_and_layers():
    labelled = render_route(_all_alphas(0.9), routing_space=_space(), width=200)
    bare = render_route(_all_alphas(0.9), routing_space=_space(), width=200, labels=False)
    # the labelled picture has dark text left of the first node column and under the nodes
    dark = (labelled < 160).all(axis=2)
    left = dark[:, : round(0.1 * labelled.shape[1])]
    bottom = dark[round(0.88 * labelled.shape[0]):]
    assert left.sum() > 20 and bottom.sum() > 20
    assert not (bare[:, : round(0.04 * bare.shape[1])] < 160).all(axis=2).any()


def test_visualizer_writes_figure_json_and_per_image_routes(tmp_path):
    images = _write_images(tmp_path / "images", 3)
    out = tmp_path / "out"
    result = visualize_routing.main([
        "--config-file", str(_write_config(tmp_path)), "--input", str(images),
        "--output", str(out), "--per-image", "--opts", "INPUT.MIN_SIZE_TEST", "0",
    ])
    figure = cv2.imread(str(out / "routing.png"))
    assert figure is not None and figure.shape[0] > 250 and figure.shape[1] > 500
    assert len(list((out / "images").glob("*.png"))) == 3
    saved = json.loads((out / "routing.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["num_images"] == 3
    assert len(saved["cells"]) == 1 + 2 + 3 + 4 + 4
    for cell in saved["cells"]:
        assert {"layer", "scale", "stride", "dropped", "passed_through", "paths"} <= set(cell)
        for path in cell["paths"].values():
            assert 0.0 <= path["rate"] <= 1.0 and 0.0 <= path["mean_alpha"] <= 1.0
    assert {"mean", "min", "max"} == set(saved["gflops"]["real"])
    assert saved["gflops"]["real"]["min"] > 0


def test_shut_gate_shows_zero_rate_and_dropped_cells(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    _set_gate(model, SHUT_CELL, 0.0, -8.0)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("shut")
    images = _write_images(tmp_path / "images", 2)
    result = visualize_routing.main([
        "--config-file", str(_write_config(tmp_path)), "--weights", str(tmp_path / "shut.pth"),
        "--input", str(images / "*.png"), "--output", str(tmp_path / "out"),
        "--opts", "INPUT.MIN_SIZE_TEST", "0",
    ])
    cells = {(c["layer"], c["scale"]): c for c in result["cells"]}
    shut, orphan = cells[SHUT_CELL], cells[ORPHAN_CELL]
    assert set(shut["paths"]) == {"keep", "up", "down"}
    assert all(p["rate"] == 0.0 and p["mean_alpha"] == 0.0 for p in shut["paths"].values())
    assert shut["dropped"] == 2 and shut["passed_through"] == 2
    assert orphan["dropped"] == 2 and orphan["passed_through"] == 0
    assert all(p["rate"] == 0.0 for p in orphan["paths"].values())
    assert result["dropped_total"] >= 4
    assert cv2.imread(str(tmp_path / "out" / "routing.png")) is not None


def test_training_step_logs_gate_rate_per_layer():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    for cell in model.backbone.all_cells():
        _set_gate(model, (cell.spec.layer, cell.spec.scale), 0.0, 1.5)  # every path open
    _set_gate(model, SHUT_CELL, 0.0, -8.0)
    model.train()
    inputs = [{"image": torch.rand(3, 64, 64) * 255,
               "sem_seg": torch.randint(0, 19, (64, 64))} for _ in range(2)]
    with EventStorage() as storage:
        model(inputs)
        scalars = {k: v[0] for k, v in storage.latest().items()}
    # layer 0: (0, 0) keeps 2 open paths, SHUT_CELL closes its 3
    assert scalars["routing/layer_0_active_rate"] == pytest.approx(2 / 5)
    for layer in (1, 2, 3):
        assert scalars[f"routing/layer_{layer}_active_rate"] == pytest.approx(1.0)
    assert "routing/layer_-1_active_rate" not in scalars
    num_paths = sum(c.spec.num_paths for c in model.backbone.all_cells()[1:])
    assert scalars["routing/gate_active_rate"] == pytest.approx(1 - 3 / num_paths)
