"""One contract for every routed meta-architecture (dyn_seg.modeling.meta_arch.routed.RoutedModel):
outputs, FLOPs at the one counting size, budget loss, input checks, execution plans,
explicit routing (no replaced ``forward``), training compile."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from dyn_seg import get_dyn_seg_cfg
from dyn_seg.benchmark.patterns import apply_gate_pattern, random_gate_pattern
from dyn_seg.modeling.meta_arch.routed import RoutedModel

REPO = Path(__file__).resolve().parents[2]
# every routed meta-architecture with the same small routed network (LAYER_NUM 3) and gates
ARCHS = {
    "semantic": "configs/Synthetic/Dynamic-Tiny.yaml",
    "panoptic": "configs/Synthetic/PanopticDeepLab-Tiny.yaml",
    "instance": "configs/Synthetic/MaskRCNN-Tiny.yaml",
    "classification": "configs/Synthetic/Classification-Tiny.yaml",
}
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.LAYER_NUM", "3", "MODEL.GATE.GATE_ON", "True",
         "MODEL.BACKBONE.INIT_CHANNEL", "16", "MODEL.BACKBONE.STEM_WIDTH", "16"]
SIZE = (128, 256)  # Panoptic-DeepLab's ASPP pooling of the Tiny config needs this size


def _model(arch: str, *opts, seed: int = 0):
    cfg = get_dyn_seg_cfg(str(REPO / ARCHS[arch]), SMALL + list(opts))
    torch.manual_seed(seed)
    return build_model(cfg)


def _inputs(n: int = 1, size=SIZE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": (torch.rand(3, *size, generator=g) * 255).to(torch.uint8),
             "height": size[0], "width": size[1]} for _ in range(n)]


def _train_batch(arch: str, n: int = 2):
    """Targets for each task (the losses are not under test, only that a step runs)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = _inputs(n)
    h, w = SIZE
    for k, x in enumerate(batch):
        if arch == "semantic":
            x["sem_seg"] = torch.randint(0, 19, SIZE)
        elif arch == "classification":
            x["label"] = k
        elif arch == "panoptic":
            x["sem_seg"] = torch.randint(0, 19, SIZE)
            x["sem_seg_weights"] = torch.ones(SIZE)
            x["center"] = torch.zeros(1, h, w)
            x["center_weights"] = torch.ones(SIZE)
            x["offset"] = torch.zeros(2, h, w)
            x["offset_weights"] = torch.ones(SIZE)
        else:
            inst = Instances(SIZE)
            inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0]]))
            inst.gt_classes = torch.tensor([1])
            masks = torch.zeros(1, h, w, dtype=torch.bool)
            masks[:, 10:50, 10:60] = True
            inst.gt_masks = BitMasks(masks)
            x["instances"] = inst
    return batch


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_meta_architecture_keeps_the_contract(arch):
    """Outputs, FLOPs at the fixed counting size (real = cells + stem + heads, every part
    counted at INPUT.FIX_SIZE_FOR_FLOPS), budget loss, input checks, execution plan."""
    fixed = (256, 512)  # a multiple of the Panoptic-DeepLab ASPP pooling window
    model = _model(arch, "INPUT.FIX_SIZE_FOR_FLOPS", str(list(fixed)),
                   "MODEL.BUDGET.CONSTRAIN", "True")
    assert isinstance(model, RoutedModel)
    assert model.execution_plan.startswith("fast: ")
    network = model.routed_network

    model.eval()
    inputs = _inputs(2)
    with torch.no_grad():
        outputs = model(inputs)
        x = model.network_input(inputs)
        _, record = network.forward_with_routing(x)
    assert x.shape[-2:] == SIZE  # the network saw the input, FLOPs are counted at `fixed`
    for i, out in enumerate(outputs):
        flops = out["flops"]
        assert set(flops) == {"real", "expected", "backbone"}
        assert flops["expected"] == pytest.approx(float(record.expected_flops[i]) * 1e-3,
                                                  rel=1e-5)
        cells_stem = float(record.real_flops[i] + record.stem_flops) * 1e-3
        assert flops["backbone"] == pytest.approx(cells_stem, rel=1e-5)
        heads = model.dense_head_mflops(fixed)
        if arch == "instance":  # plus the box head per proposal, mask head per detection
            box, mask = model._roi_head_mflops()
            heads += box * model._counts["proposals"][i] + mask * len(out["instances"])
        assert flops["real"] == pytest.approx(cells_stem + heads * 1e-3, rel=1e-5)
        assert set(out["routing"]) == {k for k, c in record.cells.items()
                                       if c.alpha is not None}
    # the counting size is the one rule: the cells' table at `fixed` gives the same stem
    assert network.flops_table(fixed)[1] == pytest.approx(record.stem_flops)

    model.train()
    batch = _train_batch(arch)
    with EventStorage() as storage:
        model.step_rate = 0.1
        assert "loss_budget" not in model(batch)
        model.step_rate = 0.9
        losses = model(batch)
        assert storage.histories()["flops/real_gflops"].latest() > 0
    assert losses["loss_budget"] > 0

    model.eval()
    bad = _inputs(1)
    bad[0]["image"] = bad[0]["image"].float()
    bad[0]["image"][0, 3, 4] = float("nan")
    bad[0]["file_name"] = "frame_0007.png"
    with pytest.raises(ValueError, match=r"frame_0007\.png holds 1 NaN/Inf"):
        model(bad)
    with pytest.raises(ValueError, match=r"\(3, H, W\).*\(1, 128, 256\)"):
        model([{"image": torch.zeros(1, *SIZE)}])

    model.fast_inference = None
    assert model.execution_plan == "faithful"


def _assigned_attributes(tree: ast.AST):
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute):
                    yield sub.attr, node.lineno
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            yield node.args[1].value, node.lineno


def test_no_module_of_the_package_replaces_a_forward():
    """Routing is handed over explicitly (DynamicNetwork.recording), compilation goes
    through nn.Module's compiled call: nothing assigns to a ``forward`` attribute."""
    found = []
    for path in sorted((REPO / "dyn_seg").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(REPO)}:{line}" for attr, line in _assigned_attributes(tree)
                  if attr == "forward"]
    assert not found, found


@pytest.mark.parametrize("fast", [False, True])
def test_plain_detectron2_head_runs_on_the_routed_backbone_with_closed_paths(fast):
    """detectron2's SemSegFPNHead takes the features of build_dynamic_routing_backbone in
    eval mode while whole cells are closed (their features are zeros, never None)."""
    from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

    from dyn_seg.modeling import build_dynamic_routing_backbone
    from dyn_seg.modeling.network.transforms import FastInference

    cfg = get_dyn_seg_cfg("", SMALL)
    network = build_dynamic_routing_backbone(cfg, None).eval()
    apply_gate_pattern(network, random_gate_pattern(network, 1.0, unit="cell"))
    network.inference = FastInference() if fast else None
    shapes = network.output_shape()
    head = SemSegFPNHead(shapes, num_classes=5, conv_dims=8, common_stride=4, norm="",
                         loss_weight=1.0, ignore_value=255).eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        features = network(x)
        logits, _ = head(features)
    for name, s in shapes.items():
        assert features[name].shape == (2, s.channels, 64 // s.stride, 128 // s.stride)
    assert not features["layer_3"].any()  # a closed coarsest cell contributes nothing
    assert logits.shape == (2, 5, 64, 128)


def _cell_modules(network):
    """(layer, scale) -> the modules of a routed cell that compute paths (operations and
    transitions; the gate is not a path)."""
    return {(c.spec.layer, c.spec.scale): [m for m in [*c.ops, c.up, c.down] if m is not None]
            for layer in network.cells for c in layer}


@pytest.mark.parametrize("arch", ["panoptic", "instance", "classification"])
def test_task_models_run_the_fast_plan_and_compute_no_closed_path(arch):
    """In eval mode the model runs the inference copy of its routed network: no operation
    or transition of a closed cell is called, every open cell computes, and the outputs
    match the faithful plan's."""
    model = _model(arch).eval()
    network = model.routed_network
    pattern = random_gate_pattern(network, 0.5, unit="cell", seed=3)
    apply_gate_pattern(network, pattern)
    inputs = _inputs(1)
    with torch.no_grad():
        model(inputs)
    copy_ = model.fast_inference.inference_copy(network)
    assert copy_.backbone is not network
    calls = {}
    handles = []
    for key, modules in _cell_modules(copy_.backbone).items():
        for m in modules:
            def hook(mod, args, out, key=key):
                calls[key] = calls.get(key, 0) + 1
            handles.append(m.register_forward_hook(hook))
    faithful_calls = {}
    for key, modules in _cell_modules(network).items():
        for m in modules:
            def hook(mod, args, out, key=key):
                faithful_calls[key] = faithful_calls.get(key, 0) + 1
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        fast_out = model(inputs)[0]
        assert not faithful_calls  # the model's own cells did not run
        ref = _faithful_output(model, inputs)
        _, record = network.forward_with_routing(model.network_input(inputs))
    for h in handles:
        h.remove()
    # the cells that take part: routed cells that received something and were not dropped
    working = {k for k, c in record.cells.items()
               if k[0] >= 0 and c.alpha is not None and not c.dropped}
    closed = set(pattern.closed)
    assert closed and working and not closed & working
    assert set(calls) == working  # no operation of a closed cell ran; every working one did
    _assert_same_task_output(arch, fast_out, ref)


def _faithful_output(model, inputs):
    """The model's output on the faithful plan (its inference copy set aside)."""
    fast, model.fast_inference = model.fast_inference, None
    try:
        return model(inputs)[0]
    finally:
        model.fast_inference = fast


def _assert_same_task_output(arch, out, ref):
    assert out["flops"] == pytest.approx(ref["flops"], rel=1e-6)
    key = {"panoptic": "sem_seg", "classification": "scores"}.get(arch)
    if key:
        torch.testing.assert_close(out[key], ref[key], atol=1e-3, rtol=0)
    else:
        assert len(out["instances"]) == len(ref["instances"])


@pytest.mark.parametrize("plan", ["graph-dense", "graph-conditional"])
@pytest.mark.parametrize("arch", ["panoptic", "instance", "classification"])
def test_task_models_run_a_graph_plan_as_one_program(arch, plan):
    """MODEL.FAST.PLAN graph-*: the task model's eval forward runs its network copy as one
    program (tensors in, tensors out) and gives the faithful plan's outputs."""
    model = _model(arch, "MODEL.FAST.PLAN", plan).eval()
    network = model.routed_network
    apply_gate_pattern(network, random_gate_pattern(network, 0.5, unit="cell", seed=4))
    inputs = _inputs(1, seed=2)
    with torch.no_grad():
        out = model(inputs)[0]
        copy_ = model.fast_inference.inference_copy(network)
        ref = _faithful_output(model, inputs)
    assert copy_.program is not None and plan in model.execution_plan
    _assert_same_task_output(arch, out, ref)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_train_compile_works_for_every_task(arch):
    """MODEL.FAST.TRAIN_COMPILE (the "eager" backend traces quickly) on every task: a
    training step runs and the state-dict keys do not change."""
    import torch._dynamo

    from dyn_seg.engine import Trainer

    torch._dynamo.reset()
    cfg = get_dyn_seg_cfg(str(REPO / ARCHS[arch]),
                          SMALL + ["MODEL.FAST.TRAIN_COMPILE", "eager"])
    plain = build_model(cfg).state_dict().keys()
    model = Trainer.build_model(cfg).train()
    assert model.state_dict().keys() == plain
    assert model.routed_network.stem._compiled_call_impl is not None
    with EventStorage():
        losses = model(_train_batch(arch))
    sum(losses.values()).backward()
    torch._dynamo.reset()
