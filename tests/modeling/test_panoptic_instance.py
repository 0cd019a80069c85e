"""Panoptic-DeepLab and Mask R-CNN on the routed backbone: configs, training, evaluation,
and one budget / FLOPs mechanism for every meta-architecture."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from dyn_seg.visualization.routing import MIN_ROUTE_WIDTH

REPO = Path(__file__).resolve().parents[2]
NEW_CONFIGS = sorted(
    [str(p.relative_to(REPO)) for p in (REPO / "configs").glob("Cityscapes-*Segmentation/*.yaml")
     if not p.name.startswith("Base-")]
    + ["configs/Synthetic/PanopticDeepLab-Tiny.yaml",
       "configs/Synthetic/PanopticDeepLab-Tiny-Budget.yaml",
       "configs/Synthetic/MaskRCNN-Tiny.yaml",
       "configs/Synthetic/MaskRCNN-Tiny-Budget.yaml"]
)
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 128)",
         "INPUT.MIN_SIZE_TEST", "64", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Generated 64x128 scenes registered as panoptic, instance and semantic datasets."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    from dyn_seg.data.panoptic import register_cityscapes_tasks
    from dyn_seg.synthetic import generate_synthetic_cityscapes

    root = generate_synthetic_cityscapes(str(tmp_path_factory.mktemp("pan")), num_train=4,
                                         num_val=2, height=64, width=128, progress=False)
    prefix = f"test_pan_{uuid.uuid4().hex[:8]}"
    names = register_cityscapes_tasks(root, prefix)
    for split in ("train", "val"):
        name = f"{prefix}_sem_seg_{split}"
        image_dir = f"{root}/cityscapes/leftImg8bit/{split}"
        gt_dir = f"{root}/cityscapes/gtFine/{split}"
        DatasetCatalog.register(name, lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y))
        meta = MetadataCatalog.get(f"cityscapes_fine_sem_seg_{split}").as_dict()
        meta.pop("name")
        MetadataCatalog.get(name).set(**{**meta, "image_dir": image_dir, "gt_dir": gt_dir,
                                         "evaluator_type": "sem_seg"})
        names[f"sem_seg_{split}"] = name
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(config: str, task: str, names, tmp_path, *opts):
    from dyn_seg import get_dyn_seg_cfg

    return get_dyn_seg_cfg(str(REPO / config), SMALL + [
        "DATASETS.TRAIN", f"('{names[task + '_train']}',)",
        "DATASETS.TEST", f"('{names[task + '_val']}',)",
        "OUTPUT_DIR", str(tmp_path), *opts])


@pytest.mark.parametrize("config", NEW_CONFIGS)
def test_config_builds(config):
    from detectron2.modeling import build_model

    import dyn_seg.modeling  # noqa: F401  (registers the meta-architectures)
    from dyn_seg import get_dyn_seg_cfg
    from dyn_seg.tasks import task_of

    cfg = get_dyn_seg_cfg(str(REPO / config), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    expected = "panoptic" if "Panoptic" in config else "instance"
    assert task_of(cfg) == expected
    assert model.budget.constrain == ("-B-" in config or "Budget" in config)


@pytest.mark.parametrize("config", [c for c in NEW_CONFIGS if "Synthetic" in c])
def test_synthetic_config_trains_and_evaluates(config, datasets, tmp_path):
    """A few iterations (the budget loss switches on at step_rate 0.5), then detectron2's
    evaluators on the generated val split."""
    from dyn_seg.engine import Trainer

    task = "panoptic" if "Panoptic" in config else "instance_seg"
    cfg = _cfg(config, task, datasets, tmp_path, "SOLVER.MAX_ITER", "2")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.histories()
    assert ("loss_budget" in history) == ("Budget" in config)
    assert history["flops/real_gflops"].latest() > history["flops/expected_gflops"].latest() > 0

    results = Trainer.test(cfg, trainer.model)
    if task == "panoptic":
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
            assert 0 <= results["panoptic_seg"][key] <= 100
        assert 0 <= results["sem_seg"]["mIoU"] <= 100
    assert 0 <= results["segm"]["AP"] <= 100
    routing = results["routing"]
    assert routing["GFLOPs_real"] > routing["GFLOPs_expected"] > 0
    assert routing["GFLOPs_real"] > routing["GFLOPs_backbone"] > 0


ARCHS = {
    "classification": ("configs/Synthetic/Classification-Tiny.yaml", None),
    "semantic": ("configs/Synthetic/Dynamic-Tiny.yaml", "sem_seg"),
    "panoptic": ("configs/Synthetic/PanopticDeepLab-Tiny.yaml", "panoptic"),
    "instance": ("configs/Synthetic/MaskRCNN-Tiny.yaml", "instance_seg"),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_budget_and_flops_same_for_every_meta_arch(arch, datasets, tmp_path):
    """The same backbone weights give the same expected FLOPs and the same cells + stem part
    of the real FLOPs under every meta-architecture; heads add to the real FLOPs only;
    closing every gate lowers both; the budget loss starts at UNUPDATE_RATE and its gradient
    reaches the gates."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import dyn_seg.modeling  # noqa: F401
    from dyn_seg.engine import Trainer
    from dyn_seg.modeling.meta_arch.routed import find_routed_network

    config, task = ARCHS[arch]
    budget = ["MODEL.BUDGET.CONSTRAIN", "True", "MODEL.FAST.ENABLED", "False"]
    if task is None:  # classification: image-level labels, no segmentation data needed
        from dyn_seg import get_dyn_seg_cfg

        cfg = get_dyn_seg_cfg(str(REPO / config), [
            *budget, "MODEL.GATE.GATE_ON", "True", "MODEL.GATE.SMALL_GATE", "False",
            "MODEL.BACKBONE.LAYER_NUM", "6", "MODEL.BACKBONE.INIT_CHANNEL", "16",
            "MODEL.BACKBONE.STEM_WIDTH", "32"])  # the backbone of the other Tiny configs
    else:
        cfg = _cfg(config, task, datasets, tmp_path, *budget)
    torch.manual_seed(0)
    model = build_model(cfg)
    net = find_routed_network(model.backbone)
    torch.manual_seed(1)
    net.reset_parameters()  # the same backbone weights for every meta-architecture

    if task is None:
        batch = [{"image": torch.rand(3, 64, 128) * 255, "label": k} for k in range(2)]
    else:
        batch = next(iter(Trainer.build_train_loader(cfg)))
    model.train()
    with EventStorage():  # R-CNN logs into the storage
        model.step_rate = 0.1
        assert "loss_budget" not in model(batch)
        model.step_rate = 0.9
        losses = model(batch)
    model.zero_grad()
    losses["loss_budget"].backward()
    gate_grads = [p.grad for n, p in net.named_parameters() if ".gate." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in gate_grads)
    head_grads = [p.grad for n, p in model.named_parameters() if not n.startswith("backbone")]
    assert all(g is None or g.abs().sum() == 0 for g in head_grads)

    model.eval()
    image = torch.full((3, 64, 128), 100, dtype=torch.uint8)
    image[:, 32:] = 60
    inputs = [{"image": image, "height": 64, "width": 128}]
    with torch.no_grad():
        out = model(inputs)[0]
        x = (image.float() - model.pixel_mean.cpu()) / model.pixel_std.cpu()
        _, direct = net.forward_with_routing(x[None])
    cells_stem = float(direct.real_flops[0] + direct.stem_flops) * 1e-3
    assert out["flops"]["expected"] == pytest.approx(float(direct.expected_flops[0]) * 1e-3,
                                                     rel=1e-5)
    assert out["flops"]["real"] > cells_stem  # heads are counted
    assert out["flops"]["backbone"] == pytest.approx(cells_stem, rel=1e-5)
    assert set(out["routing"]) == set(direct.cells)

    # FLOPs counted at a new input size during inference leave every module in eval mode
    with torch.no_grad():
        model([{"image": torch.full((3, 64, 256), 90, dtype=torch.uint8), "height": 64,
               "width": 256}])
    assert not any(m.training for m in model.modules())

    for cell in net.all_cells():
        if cell.gate is not None:
            torch.nn.init.constant_(cell.gate.proj.bias, -50.0)
    with torch.no_grad():
        closed = model(inputs)[0]["flops"]
    assert closed["expected"] < out["flops"]["expected"]
    assert closed["real"] < out["flops"]["real"]


@pytest.mark.parametrize("arch", ["panoptic", "instance"])
def test_predictor_demo_and_route_visualiser(arch, datasets, tmp_path):
    """DefaultPredictor returns detectron2's standard keys plus "flops"; tools/demo.py
    draws the overlay with the route and GFLOPs; tools/visualize_routing.py reads the route.

    The weights are random, so no check may rely on them finding objects: Mask R-CNN always
    returns "instances" (possibly empty); detectron2's Panoptic-DeepLab adds "instances"
    only when its panoptic segmentation has a thing segment, so that key is checked where
    present, and once more with a centre threshold no heatmap reaches (no instance at all).
    The overlay differs from the frame because --show-flops writes on it. Tolerances: FLOPs
    are only compared by order (real > expected > 0)."""
    import numpy as np
    from detectron2.engine import DefaultPredictor
    from PIL import Image

    from dyn_seg.checkpoint import DynSegCheckpointer
    from dyn_seg.tools import demo
    from dyn_seg.tools import visualize_routing as vis

    config, task = ARCHS[arch]
    cfg = _cfg(config, task, datasets, tmp_path)
    predictor = DefaultPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    out = predictor(image)
    keys = {"panoptic_seg", "sem_seg"} if arch == "panoptic" else {"instances"}
    assert keys <= set(out)
    assert out["flops"]["real"] > out["flops"]["expected"] > 0
    if arch == "panoptic":
        panoptic, segments = out["panoptic_seg"]
        # Panoptic-DeepLab's format: ids category * label_divisor + instance, no segments list
        assert panoptic.shape == (64, 128) and segments is None
        assert out["sem_seg"].shape == (19, 64, 128)
        no_centres = DefaultPredictor(_cfg(config, task, datasets, tmp_path,
                                           "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "1e9"))
        none_found = no_centres(image)
        assert {"panoptic_seg", "sem_seg", "flops"} <= set(none_found)
        assert "instances" not in none_found
    if "instances" in out:
        assert out["instances"].image_size == (64, 128)

    weights = tmp_path / "model.pth"
    DynSegCheckpointer(predictor.model, str(tmp_path)).save("model")
    image_file = tmp_path / "street.png"
    Image.fromarray(image).save(image_file)

    opts = SMALL + ["DATASETS.TEST", f"('{datasets[task + '_val']}',)",
                    "MODEL.WEIGHTS", str(weights)]
    assert demo.main(["--config-file", str(REPO / config), "--input", str(image_file),
                      "--output", str(tmp_path / "demo"), "--show-flops", "--show-route",
                      "--opts", *opts]) == 0
    overlay = np.asarray(Image.open(tmp_path / "demo" / "street.png").convert("RGB"))
    # a 64 x 128 frame is too small for a legible route: --show-route draws it in a white
    # band below the frame, at least MIN_ROUTE_WIDTH wide; the frame above carries the overlay
    assert overlay.shape[0] > 64 and overlay.shape[1] >= max(128, MIN_ROUTE_WIDTH)
    assert not np.array_equal(overlay[:64, :128], image)

    result = vis.main(["--config-file", str(REPO / config), "--input", str(image_file),
                       "--weights", str(weights), "--output", str(tmp_path / "routes"),
                       "--per-image",
                       "--opts", *SMALL])
    assert (tmp_path / "routes" / "routing.png").is_file() and result


def test_instance_evaluator_scores_ground_truth_100(datasets, tmp_path):
    """The Cityscapes instance evaluation of the instance and panoptic tasks gives AP 100
    to predictions equal to the ground truth (matches included, under numpy 2)."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import Instances
    from PIL import Image

    from dyn_seg.tasks import CityscapesInstanceAPEvaluator

    name = datasets["instance_seg_val"]
    names = MetadataCatalog.get(name).thing_classes
    from cityscapesscripts.helpers.labels import id2label

    evaluator = CityscapesInstanceAPEvaluator(name)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        gt_file = d["file_name"].replace("leftImg8bit", "gtFine", 1).replace(
            "_leftImg8bit.png", "_gtFine_instanceIds.png")
        ids = np.asarray(Image.open(gt_file)).astype(np.int64)
        objs = [i for i in np.unique(ids) if i >= 1000]
        inst = Instances((d["height"], d["width"]))
        inst.pred_masks = torch.as_tensor(np.stack([ids == i for i in objs]))
        inst.pred_classes = torch.tensor([names.index(id2label[int(i) // 1000].name)
                                          for i in objs])
        inst.scores = torch.ones(len(objs))
        evaluator.process([d], [{"instances": inst}])
    before = set(Path.cwd().iterdir())
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    # cityscapesscripts' matches.json goes into the evaluator's temporary folder
    assert set(Path.cwd().iterdir()) == before
