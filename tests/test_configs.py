"""Every shipped config loads, builds and runs; the model zoo finds configs by name."""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

from dyn_seg import model_zoo

# semantic segmentation configs; the panoptic and instance ones are tested in
# tests/test_panoptic_instance.py
CONFIGS = [
    c for c in model_zoo.list_configs()
    if not c.startswith(("Cityscapes-PanopticSegmentation/", "Cityscapes-InstanceSegmentation/",
                         "Synthetic/PanopticDeepLab", "Synthetic/MaskRCNN"))
]


def test_every_variant_of_the_paper_is_shipped():
    expected = {
        "Cityscapes/Base-Dynamic.yaml",
        "Cityscapes/Dynamic-L16-A.yaml",
        "Cityscapes/Dynamic-L16-B.yaml",
        "Cityscapes/Dynamic-L16-C.yaml",
        "Cityscapes/Dynamic-L16-Raw.yaml",
        "Cityscapes/Dynamic-L16-Raw-SDP0.3-560k.yaml",
        "Cityscapes/Dynamic-L16-Raw-ImageNet.yaml",
        "Cityscapes/Dynamic-L33-Raw-ImageNet.yaml",
        "Cityscapes/Fix-L16.yaml",
    }
    assert expected <= set(CONFIGS)
    assert any(c.startswith("PascalVOC/") for c in CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_runs(name):
    cfg = model_zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    # A full-width L33 forward is slow on a 2-core CPU; the topology and every key of the
    # file are still exercised with fewer channels.
    cfg.MODEL.BACKBONE.INIT_CHANNEL = min(cfg.MODEL.BACKBONE.INIT_CHANNEL, 16)
    cfg.MODEL.BACKBONE.STEM_WIDTH = min(cfg.MODEL.BACKBONE.STEM_WIDTH, 16)
    torch.manual_seed(0)
    model = build_model(cfg)
    image = torch.randint(0, 256, (3, 50, 70)).float()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image}])[0]
    assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 50, 70)
    assert torch.isfinite(out["sem_seg"]).all()
    assert out["flops"]["real"] > out["flops"]["expected"] >= 0
    model.train()
    model.step_rate = 0.5
    target = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (50, 70))
    losses = model([{"image": image, "sem_seg": target}] * 2)
    assert ("loss_budget" in losses) == cfg.MODEL.BUDGET.CONSTRAIN
    assert all(torch.isfinite(v) for v in losses.values())


def test_variants_hold_the_paper_settings():
    b = model_zoo.get_config("Cityscapes/Dynamic-L16-B.yaml")
    assert b.MODEL.GATE.SMALL_GATE and b.MODEL.BUDGET.CONSTRAIN
    assert (b.MODEL.BUDGET.LOSS_WEIGHT, b.MODEL.BUDGET.LOSS_MU) == (0.5, 0.1)
    c = model_zoo.get_config("Cityscapes/Dynamic-L16-C.yaml")
    assert (c.MODEL.BUDGET.LOSS_WEIGHT, c.MODEL.BUDGET.LOSS_MU) == (0.5, 0.2)
    fix = model_zoo.get_config("Cityscapes/Fix-L16.yaml")
    assert not fix.MODEL.GATE.GATE_ON
    l33 = model_zoo.get_config("Cityscapes/Dynamic-L33-Raw-ImageNet.yaml")
    assert l33.MODEL.BACKBONE.LAYER_NUM == 33 and l33.SOLVER.GATE_LR_MULTI == 2.5
    voc = model_zoo.get_config("PascalVOC/Dynamic-L16-Raw.yaml")
    assert voc.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 21 and voc.SOLVER.IMS_PER_BATCH == 16


def test_unknown_config_lists_available():
    with pytest.raises(FileNotFoundError, match="Dynamic-L16-B.yaml"):
        model_zoo.get_config_file("Cityscapes/Nope.yaml")


def test_trained_weights_without_registry_entry_explain_conversion():
    with pytest.raises(KeyError, match="convert_reference_checkpoint"):
        model_zoo.get("Cityscapes/Dynamic-L16-B.yaml", trained=True)


def test_model_zoo_get_builds_eval_model():
    model = model_zoo.get("Synthetic/Dynamic-Tiny.yaml", device="cpu")
    assert not model.training


def test_trained_weights_are_verified_by_sha256(tmp_path, monkeypatch):
    model = model_zoo.get("Synthetic/Dynamic-Tiny.yaml", device="cpu")
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, path)
    monkeypatch.setitem(model_zoo.MODEL_ZOO_WEIGHTS, "Synthetic/Dynamic-Tiny.yaml",
                        {"url": str(path), "sha256": "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        model_zoo.get("Synthetic/Dynamic-Tiny.yaml", trained=True, device="cpu")
    import hashlib

    good = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(model_zoo.MODEL_ZOO_WEIGHTS, "Synthetic/Dynamic-Tiny.yaml",
                        {"url": str(path), "sha256": good})
    loaded = model_zoo.get("Synthetic/Dynamic-Tiny.yaml", trained=True, device="cpu")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
