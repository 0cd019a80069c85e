"""Numerical parity with the recorded reference implementation (shared/fixtures).

The fixture holds a 6-layer, C=16 reference network with some gates forced shut and
randomised BN statistics, its weights under reference names, and what it computed on two
64x128 images: logits, per-image real / expected FLOPs, training losses.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from reference_helpers import FLOPS_RTOL, LOGIT_RTOL, LOSS_RTOL, reference_cfg

from dyn_seg.checkpoint import convert_reference_state_dict
from dyn_seg.modeling.heads.sem_seg import DynamicSemSegHead
from dyn_seg.modeling.meta_arch.analysis import all_open_flops
from dyn_seg.modeling.network.backbone import DynamicNetwork


@pytest.fixture(scope="module")
def converted(reference_fixture):
    """A model with the fixture's weights (train mode) and the conversion report."""
    model = build_model(reference_cfg(reference_fixture["official_config"]))
    state, report = convert_reference_state_dict(
        reference_fixture["state_dict"], model.state_dict()
    )
    model.load_state_dict(state)
    return model, report


@pytest.fixture(scope="module")
def eval_outputs(converted, reference_fixture):
    """Inference on both images in one batch, and on each image alone."""
    model = copy.deepcopy(converted[0]).eval()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]}
              for im in reference_fixture["images"]]
    with torch.no_grad():
        return model(inputs), [model([x])[0] for x in inputs]


def _max_rel(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def test_reference_weights_convert_cleanly_with_equal_parameter_count(
    converted, reference_fixture
):
    model, report = converted
    assert report.ok, report.summary()
    assert report.converted == len(reference_fixture["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == reference_fixture["num_params"]


def test_eval_logits_match_reference_batched_and_per_image(eval_outputs, reference_fixture):
    batched, single = eval_outputs
    for i in range(len(batched)):
        ref_b = reference_fixture["eval_batched"]["sem_seg"][i]
        ref_s = reference_fixture["eval_single"][i]["sem_seg"]
        assert batched[i]["sem_seg"].shape == ref_b.shape
        assert _max_rel(batched[i]["sem_seg"], ref_b) < LOGIT_RTOL
        assert _max_rel(single[i]["sem_seg"], ref_s) < LOGIT_RTOL


@pytest.mark.parametrize("plan", ["fast", "graph-dense", "graph-conditional"])
def test_default_fast_inference_path_matches_reference_too(converted, reference_fixture, plan):
    """MODEL.FAST.ENABLED (the default) folds norms and skips closed paths: same logits
    within 1e-4 relative, same FLOPs, batched and per image; for every plan
    (MODEL.FAST.PLAN)."""
    from dyn_seg.modeling.network.transforms import FastInference, InferenceOptions

    model = copy.deepcopy(converted[0]).eval()
    model.fast_inference = FastInference(InferenceOptions(plan_name=plan))
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]}
              for im in reference_fixture["images"]]
    with torch.no_grad():
        batched, single = model(inputs), [model([x])[0] for x in inputs]
    record = reference_fixture["eval_batched"]
    for i in range(len(batched)):
        assert _max_rel(batched[i]["sem_seg"], record["sem_seg"][i]) < LOGIT_RTOL
        ref_single = reference_fixture["eval_single"][i]
        assert _max_rel(single[i]["sem_seg"], ref_single["sem_seg"]) < LOGIT_RTOL
        assert single[i]["flops"]["real"] * 1e3 == pytest.approx(
            ref_single["real_flops_mflops"], rel=FLOPS_RTOL)


def test_eval_flops_match_reference_per_image_and_batch_mean(eval_outputs, reference_fixture):
    batched, single = eval_outputs
    record = reference_fixture["eval_batched"]
    for kind, key in (("real", "real_flops_mflops"), ("expected", "expt_flops_mflops")):
        mean = sum(o["flops"][kind] for o in batched) / len(batched) * 1e3  # GFLOPs -> MFLOPs
        assert mean == pytest.approx(record[key], rel=FLOPS_RTOL)
        for out, rec in zip(single, reference_fixture["eval_single"]):
            assert out["flops"][kind] * 1e3 == pytest.approx(rec[key], rel=FLOPS_RTOL)


def test_train_losses_and_flops_match_reference(converted, reference_fixture):
    # a copy: the training forward updates BN running statistics
    fresh_model = copy.deepcopy(converted[0]).train()
    fresh_model.step_rate = reference_fixture["train_step_rate"]
    inputs = [{"image": im, "sem_seg": lb}
              for im, lb in zip(reference_fixture["images"], reference_fixture["labels"])]
    with EventStorage(0) as storage:
        losses = fresh_model(inputs)
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    record = reference_fixture["train"]
    assert set(losses) == set(record["losses"])
    for key, value in record["losses"].items():
        assert float(losses[key].detach()) == pytest.approx(value, rel=LOSS_RTOL), key
    assert scalars["flops/real_gflops"] * 1e3 == pytest.approx(
        record["real_flops_mflops"], rel=FLOPS_RTOL)
    assert scalars["flops/expected_gflops"] * 1e3 == pytest.approx(
        record["expt_flops_mflops"], rel=FLOPS_RTOL)


# Reference FLOPs (MFLOPs) of the Cityscapes networks (C=64, nnSyncBN, 19 classes) with
# every gate forced open, counted at 1024 x 2048.
@pytest.mark.parametrize("layer_num, real, expected", [
    (16, 118085.125, 95614.953),
    (33, 244621.672, 203362.906),
])
def test_all_open_flops_match_reference_at_cityscapes_size(layer_num, real, expected):
    backbone = DynamicNetwork(layer_num=layer_num, init_channel=64, norm="nnSyncBN")
    model = torch.nn.Module()
    model.backbone = backbone
    model.sem_seg_head = DynamicSemSegHead(backbone.output_shape(), num_classes=19,
                                           norm="nnSyncBN")
    flops = all_open_flops(model, (1024, 2048))
    assert flops["real"] == pytest.approx(real, rel=FLOPS_RTOL)
    assert flops["expected"] == pytest.approx(expected, rel=FLOPS_RTOL)
    parts = flops["expected"] + flops["gates"] + flops["stem"] + flops["head"]
    assert flops["real"] == pytest.approx(parts)
    backbone_only = all_open_flops(backbone, (1024, 2048))
    assert backbone_only["head"] == 0
    assert backbone_only["real"] == pytest.approx(flops["real"] - flops["head"])


def _run_converter(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_reference_checkpoint.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture()
def reference_files(tmp_path, reference_fixture):
    """The fixture's weights as a reference checkpoint, and a yaml config of its network."""
    ckpt = tmp_path / "reference.pth"
    torch.save({"model": reference_fixture["state_dict"]}, ckpt)
    config = tmp_path / "reference.yaml"
    config.write_text(reference_cfg(reference_fixture["official_config"]).dump())
    return ckpt, config


def test_converter_tool_output_loads_into_fresh_model(tmp_path, reference_files,
                                                      reference_fixture):
    ckpt, config = reference_files
    out = tmp_path / "converted.pth"
    result = _run_converter(str(ckpt), str(out), "--config-file", str(config))
    assert result.returncode == 0, result.stderr
    assert "converted" in result.stdout and out.is_file()

    model = build_model(reference_cfg(reference_fixture["official_config"]))
    checkpointer = DetectionCheckpointer(model)
    results = []
    load_model = checkpointer._load_model  # returns the incompatible keys that load() logs
    checkpointer._load_model = lambda ckpt: results.append(load_model(ckpt)) or results[-1]
    checkpointer.load(str(out))
    (incompatible,) = results
    assert not incompatible.missing_keys
    assert not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    expected, _ = convert_reference_state_dict(reference_fixture["state_dict"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_converter_tool_refuses_checkpoint_of_another_network(tmp_path, reference_files):
    ckpt, config = reference_files
    out = tmp_path / "converted.pth"
    args = [str(ckpt), str(out), "--config-file", str(config),
            "--opts", "MODEL.BACKBONE.INIT_CHANNEL", "8"]
    result = _run_converter(*args)
    assert result.returncode == 1
    assert "shape mismatches" in result.stdout and "--allow-partial" in result.stderr
    assert not out.exists()

    partial = _run_converter(*args[:4], "--allow-partial", *args[4:])
    assert partial.returncode == 0, partial.stderr
    assert out.is_file()
