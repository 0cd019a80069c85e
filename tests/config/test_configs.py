"""Every shipped config loads, builds and runs; the model zoo finds configs by name."""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

from dyn_seg import model_zoo
from dyn_seg.tasks import task_of

# semantic segmentation configs; the panoptic and instance ones are tested in
# tests/modeling/test_panoptic_instance.py
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
    if task_of(cfg) == "classification":
        _check_classifier_runs(cfg, model, image)
        return
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


def _check_classifier_runs(cfg, model, image):
    model.eval()
    with torch.no_grad():
        out = model([{"image": image}])[0]
    assert out["scores"].shape == (cfg.MODEL.CLASSIFIER.NUM_CLASSES,)
    assert out["flops"]["real"] > out["flops"]["expected"] >= 0
    model.train()
    losses = model([{"image": image, "label": 1}] * 2)
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


# ----------------------------------------------------------------------------- recipe
CITYSCAPES = ("A", "B", "C", "Raw", "Raw-SDP0.3-560k", "Raw-ImageNet")
SHORT_EDGES = (512, 768, 1024, 1280, 1536, 2048)


def _variant(name):
    path = "Cityscapes/Dynamic-L33-Raw-ImageNet.yaml" if name == "L33" else \
        f"Cityscapes/Dynamic-L16-{name}.yaml"
    return model_zoo.get_config(path)


@pytest.mark.parametrize("name", CITYSCAPES + ("L33",))
def test_cityscapes_variants_hold_the_reference_recipe(name):
    cfg = _variant(name)
    # precise BN: on for Raw, the drop-path and the ImageNet variants, off for A/B/C
    assert cfg.TEST.PRECISE_BN.ENABLED == (name not in ("A", "B", "C"))
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    assert cfg.SOLVER.WARMUP_FACTOR == 0.001 and cfg.SOLVER.WARMUP_ITERS == 1000
    assert (cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING) == (0.9, 0.0)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == SHORT_EDGES
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and cfg.INPUT.MAX_SIZE_TRAIN == 4096
    assert tuple(cfg.INPUT.CROP.SIZE) == (768, 768) and cfg.INPUT.CROP.TYPE == "absolute"
    assert cfg.SOLVER.MAX_ITER == (560000 if name == "Raw-SDP0.3-560k" else 190000)
    assert cfg.MODEL.BACKBONE.DROP_PROB == (0.3 if name == "Raw-SDP0.3-560k" else 0.0)
    assert cfg.SOLVER.BASE_LR == (0.02 if "ImageNet" in name or name == "L33" else 0.05)
    # TTA (off by default) at the training short edges, with flips
    assert not cfg.TEST.AUG.ENABLED
    assert tuple(cfg.TEST.AUG.MIN_SIZES) == SHORT_EDGES and cfg.TEST.AUG.FLIP


def test_every_config_tests_with_tta_at_its_training_short_edges():
    for name in CONFIGS:
        cfg = model_zoo.get_config(name)
        if cfg.INPUT.CROP.ENABLED and name != "Base-DynamicRouting.yaml":
            assert tuple(cfg.TEST.AUG.MIN_SIZES) == tuple(cfg.INPUT.MIN_SIZE_TRAIN), name


# ----------------------------------------------------------------------------- config keys
def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_add_dynamic_routing_config_only_adds_keys():
    from detectron2.config import get_cfg

    from dyn_seg import add_dynamic_routing_config

    before = _flat(get_cfg())
    after = _flat(add_dynamic_routing_config(get_cfg()))
    changed = {k for k in before if after[k] != before[k]}
    assert not changed
    assert {"MODEL.BACKBONE.LAYER_NUM", "SOLVER.POLY_LR_POWER", "SOLVER.AMP.PRECISION"} <= (
        after.keys() - before.keys())


def test_default_dyn_seg_config_builds_the_dynamic_routing_model():
    from dyn_seg import get_dyn_seg_cfg
    from dyn_seg.modeling import DynamicSemanticSegmentor

    cfg = get_dyn_seg_cfg(opts=["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.LAYER_NUM", "3",
                                "MODEL.BACKBONE.INIT_CHANNEL", "8"])
    assert isinstance(build_model(cfg), DynamicSemanticSegmentor)


def test_removed_training_bf16_key_names_its_replacement(tmp_path):
    from dyn_seg import get_dyn_seg_cfg

    old = tmp_path / "old.yaml"
    old.write_text(f'_BASE_: "{model_zoo.get_config_file("Synthetic/Dynamic-Tiny.yaml")}"\n'
                   "MODEL:\n  FAST:\n    TRAIN_BF16: True\n")
    with pytest.raises(KeyError, match="TRAIN_BF16.*old.yaml.*SOLVER.AMP.ENABLED"):
        get_dyn_seg_cfg(str(old))
    with pytest.raises(KeyError, match="TRAIN_BF16.*command line.*SOLVER.AMP.ENABLED"):
        get_dyn_seg_cfg(opts=["MODEL.FAST.TRAIN_BF16", "True"])


def test_unknown_amp_precision_is_rejected():
    from dyn_seg import get_dyn_seg_cfg

    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='half'.*bfloat16"):
        get_dyn_seg_cfg(opts=["SOLVER.AMP.PRECISION", "half"])
