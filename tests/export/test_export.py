"""Exported models keep the routing: each image is routed by its own gates.

One small network (2 layers, 8 channels) whose gates are set so that four 64x128 images
take four different routes (:func:`dyn_seg.benchmark.routes.route_images`): the export
sample, one where a cell the sample kept open is shut, one where a path the sample shut is
open, one where a last-layer cell is shut. It is exported once per format (module-scoped
fixtures) and every export is compared with the eager PyTorch module on all four images.
"""
from __future__ import annotations

import json
import runpy
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO, tiny_cfg
from detectron2.modeling import build_model
from torch import nn

from dyn_seg.benchmark.routes import route_images
from dyn_seg.export import ExportableSegmentor
from dyn_seg.export.exporters import check_combination, export, export_program
from dyn_seg.export.runtime import count_ops, executed_nodes, load_exported
from dyn_seg.modeling import InferenceCopy

SAMPLE, CELL_SHUT, PATH_OPEN, LAST_SHUT = range(4)
OPEN_CELL = (0, 1)  # open for the sample, shut for CELL_SHUT
SHUT_PATH = ((0, 0), "down")  # shut for the sample, open for PATH_OPEN
LAST_CELL = (1, 1)  # a last-layer cell, shut for LAST_SHUT
ROUTE = {
    OPEN_CELL: {p: [True, False, True, True] for p in ("keep", "up", "down")},
    SHUT_PATH[0]: {SHUT_PATH[1]: [False, False, True, False]},
    LAST_CELL: {"keep": [True, True, True, False]},
}
CONV_OPS = {"Conv", "FusedConv"}


def small_cfg():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.LAYER_NUM = 2
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["layer_0", "layer_1", "layer_2"]
    cfg.MODEL.FAST.ENABLED = False
    return cfg


@pytest.fixture(scope="module")
def routed():
    torch.manual_seed(0)
    model = build_model(small_cfg()).eval()
    images = torch.rand(4, 3, 64, 128) * 255
    images[CELL_SHUT] *= 0.3
    images[PATH_OPEN] = images[PATH_OPEN] * 0.5 + 100
    route_images(model, images, ROUTE)
    modules = {v: ExportableSegmentor(model, v) for v in ("conditional", "dense")}
    with torch.no_grad():
        eager = {v: [m(images[i:i + 1]) for i in range(4)] for v, m in modules.items()}
    return model, images, modules, eager


def open_pattern(out):
    return tuple((out["gates"][0] > 0).tolist())


def assert_matches(out, ref):
    """1e-4 relative on the logits, argmax equal up to float ties, same gates and GFLOPs."""
    got, want = np.asarray(out["sem_seg"]), ref["sem_seg"].numpy()
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale
    top2 = np.sort(want, axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= 1e-4 * scale
    assert ((got.argmax(1) == want.argmax(1)) | ties).all()
    np.testing.assert_allclose(np.asarray(out["gates"]), ref["gates"].numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["gflops"]), ref["gflops"].numpy(), rtol=1e-5)


def test_routes_differ_image_by_image_as_set(routed):
    _, _, _, eager = routed
    patterns = [open_pattern(o) for o in eager["conditional"]]
    assert len(set(patterns)) == 4, "every image takes its own route"
    assert [open_pattern(o) for o in eager["dense"]] == patterns
    flops = [float(o["gflops"][0]) for o in eager["conditional"]]
    assert flops[CELL_SHUT] < flops[SAMPLE] < flops[PATH_OPEN]
    for a, b in zip(eager["conditional"], eager["dense"]):
        assert_matches({k: v.numpy() for k, v in a.items()}, b)


@pytest.fixture(scope="module")
def program(routed):
    _, images, modules, _ = routed
    return export_program(modules["conditional"], images[SAMPLE:SAMPLE + 1])


@pytest.fixture(scope="module")
def exports(routed, program, tmp_path_factory):
    """The conditional .pt2 and .onnx (one ExportedProgram), the dense .onnx (dynamo) and
    the dense TorchScript trace (TracingAdapter)."""
    _, images, modules, _ = routed
    sample = images[SAMPLE:SAMPLE + 1]
    root = tmp_path_factory.mktemp("exports")
    out = {}
    out["pt2"] = export(modules["conditional"], sample, "pt2", "torch-export",
                        str(root / "pt2"), program=program).path
    out["onnx-conditional"] = export(modules["conditional"], sample, "onnx", "onnx-dynamo",
                                     str(root / "onnx-c"), program=program).path
    out["onnx-dense"] = export(modules["dense"], sample, "onnx", "onnx-dynamo",
                               str(root / "onnx-d")).path
    out["torchscript"] = export(modules["dense"], sample, "torchscript", "tracing",
                                str(root / "ts")).path
    return out


def test_torch_export_keeps_routing_as_conditionals(program):
    conds = [n for n in program.graph.nodes if n.target is torch.ops.higher_order.cond]
    # per cell: its operations and each of its up / down transitions
    assert len(conds) >= 10


@pytest.mark.parametrize("name", ["pt2", "onnx-conditional", "onnx-dense", "torchscript"])
def test_exported_model_equals_eager_on_images_routed_unlike_the_sample(routed, exports, name):
    _, images, _, eager = routed
    variant = "dense" if name in ("onnx-dense", "torchscript") else "conditional"
    runner = load_exported(exports[name])
    assert runner.metadata["variant"] == variant
    for i in range(4):
        assert_matches(runner(images[i:i + 1].numpy()), eager[variant][i])


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def test_onnx_conditional_has_if_nodes_dense_has_no_control_flow(exports):
    conditional = onnx.load(exports["onnx-conditional"]).graph
    dense = onnx.load(exports["onnx-dense"]).graph
    assert sum(n.op_type == "If" for n in conditional.node) >= 10
    assert not [n for n in _all_nodes(dense) if n.op_type in ("If", "Loop", "Scan")]
    # the branches hold the cells' convolutions
    inside = [n for n in _all_nodes(conditional) if n.op_type == "Conv"]
    top = [n for n in conditional.node if n.op_type == "Conv"]
    assert len(inside) > len(top)
    # each weight stored once: in the branch that reads it, no unread top-level copy
    read = {name for n in _all_nodes(conditional) for name in n.input}
    assert all(t.name in read for t in conditional.initializer)


def _eager_convolutions(module: ExportableSegmentor, image: torch.Tensor) -> int:
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in module.copy.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(image)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def test_onnx_runtime_computes_no_operator_of_a_closed_path(routed, exports, tmp_path):
    """ONNX Runtime's profiler lists each node it ran, inside If branches too: per image
    it runs exactly the convolutions the eager conditional plan runs (which skips the
    operations and transitions its gates closed), fewer than the graph holds."""
    _, images, modules, _ = routed
    graph_convs = sum(n.op_type == "Conv"
                      for n in _all_nodes(onnx.load(exports["onnx-conditional"]).graph))
    counts = {}
    for i in range(4):
        runner = load_exported(exports["onnx-conditional"], str(tmp_path / f"p{i}"),
                               optimize=False)
        runner(images[i:i + 1].numpy())
        ran = executed_nodes(runner.session.end_profiling())
        counts[i] = count_ops(ran, CONV_OPS)
        assert counts[i] == _eager_convolutions(modules["conditional"], images[i:i + 1]), i
    assert counts[PATH_OPEN] == graph_convs  # every path open
    assert counts[CELL_SHUT] < counts[SAMPLE] < counts[PATH_OPEN]
    assert counts[LAST_SHUT] < counts[SAMPLE]


def test_tracing_adapter_trace_of_dense_variant_matches_eager(routed):
    from detectron2.export import TracingAdapter

    _, images, modules, eager = routed
    adapter = TracingAdapter(modules["dense"], (images[SAMPLE:SAMPLE + 1],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    for i in range(4):
        out = adapter.outputs_schema(traced(images[i:i + 1]))
        assert set(out) == {"sem_seg", "gates", "gflops"}
        assert_matches({k: v.numpy() for k, v in out.items()}, eager["dense"][i])


# -- guards -----------------------------------------------------------------------------


def _raises_naming_export(fn, match="tools/export_model.py"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match=match):
            fn()


def test_tracing_or_exporting_the_fast_plan_raises_naming_the_export_command():
    cfg = small_cfg()
    cfg.MODEL.FAST.ENABLED = True  # eval mode runs the fast plan on a cached copy
    model = build_model(cfg).eval()
    copy = InferenceCopy(model)  # MODEL.FAST.PLAN fast
    x = torch.randn(1, 3, 64, 128)
    _raises_naming_export(lambda: torch.jit.trace(lambda t: copy(t)[0], (x,)))
    _raises_naming_export(lambda: torch.export.export(copy, (x,), strict=False))
    # detectron2's TracingAdapter on the segmentor: the fast inference's weight cache
    from detectron2.export import TracingAdapter

    adapter = TracingAdapter(model, [{"image": x[0] * 50}],
                             inference_func=lambda m, inputs: m(inputs)[0]["sem_seg"])
    _raises_naming_export(lambda: torch.jit.trace(adapter, adapter.flattened_inputs))


def test_tracing_the_segmentors_results_raises_instead_of_freezing_them():
    """detectron2's TracingAdapter on the segmentor itself (as detectron2's
    export_model.py does) stopped with a KeyError on the (layer, scale) routing keys, and
    tracing only its logits froze the host-side results: now a clear error."""
    from detectron2.export import TracingAdapter

    model = build_model(small_cfg()).eval()  # faithful eval forward, host-side results
    adapter = TracingAdapter(model, [{"image": torch.rand(3, 64, 128) * 255}])
    _raises_naming_export(lambda: torch.jit.trace(adapter, adapter.flattened_inputs))


def test_scripting_raises_naming_the_export_command():
    model = build_model(small_cfg()).eval()
    _raises_naming_export(lambda: torch.jit.script(model))


def test_tracing_the_conditional_variant_is_refused(routed):
    _, images, modules, _ = routed
    with pytest.raises(ValueError, match="--variant dense"):
        check_combination("torchscript", "tracing", "conditional")
    with pytest.raises(ValueError, match="torch-export"):
        check_combination("pt2", "tracing", "dense")
    _raises_naming_export(lambda: torch.jit.trace(modules["conditional"], (images[:1],)),
                          match="torch.export")


# -- the tools --------------------------------------------------------------------------


def _run_tool(script, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(REPO / script), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert exit_info.value.code == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def test_export_tool_and_runner_on_a_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    rows = _run_tool("tools/export_model.py", [
        "--config-file", str(REPO / "configs/Synthetic/Dynamic-Tiny.yaml"),
        "--format", "onnx", "--export-method", "onnx-dynamo", "--variant", "dense",
        "--output", str(out), "--size", "64x128", "--run", "2",
        "MODEL.BACKBONE.LAYER_NUM", "2", "MODEL.BACKBONE.INIT_CHANNEL", "8",
        "MODEL.BACKBONE.STEM_WIDTH", "16",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['layer_0','layer_1','layer_2']",
    ], monkeypatch, capsys)
    assert rows[0]["exported"] == str(out / "model.onnx")
    assert rows[0]["input_shape"] == [1, 3, 64, 128]
    checked = rows[1:]
    assert [r["image"] for r in checked] == ["sample", "generated-1"]
    for r in checked:
        assert r["max_rel_diff"] <= 1e-4 and r["gates_equal_open"] and r["gflops"] > 0
    runs = _run_tool("tools/deploy/run_exported.py", [
        "--model", str(out / "model.onnx"), "--generate", "2",
        "--output", str(tmp_path / "labels")], monkeypatch, capsys)
    assert [r["image"] for r in runs] == ["generated-0", "generated-1"]
    assert runs[1]["gflops"] == pytest.approx(checked[1]["gflops"], rel=1e-5)
    assert (tmp_path / "labels" / "generated-0.png").is_file()


def test_sample_image_fixes_the_export_size(tmp_path):
    """--sample-image: detectron2's test-time resize, rounded up to multiples of 32."""
    import cv2

    from dyn_seg.export.pipeline import sample_input

    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.full((100, 170, 3), 60, np.uint8))
    cfg = small_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 1024
    sample = sample_input(cfg, 32, str(path))
    assert sample.shape == (3, 128, 224)  # 128 x 217.6 -> 128 x 218 -> 128 x 224
    assert sample_input(cfg, 32, size=(70, 90)).shape == (3, 96, 96)
    with pytest.raises(FileNotFoundError, match="cannot be read"):
        sample_input(cfg, 32, str(tmp_path / "missing.png"))
