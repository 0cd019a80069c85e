"""Bad input on the panoptic, instance and classification paths (docs/BAD_INPUT.md):
inference at any size, all-ignore labels, damaged panoptic / instance / ImageNet files, and
the tools' handling of each task."""
from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PANOPTIC = "configs/Synthetic/PanopticDeepLab-Tiny.yaml"
MASK_RCNN = "configs/Synthetic/MaskRCNN-Tiny.yaml"
CLASSIFIER = "configs/Synthetic/Classification-Tiny.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 128)",
         "INPUT.MIN_SIZE_TEST", "64", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cfg_of(config: str, *opts):
    from dyn_seg import get_dyn_seg_cfg

    return get_dyn_seg_cfg(str(REPO / config), SMALL + list(opts))


@pytest.fixture(scope="module")
def panoptic_model():
    from detectron2.modeling import build_model

    import dyn_seg.modeling  # noqa: F401

    torch.manual_seed(0)
    model = build_model(cfg_of(PANOPTIC))
    return model.eval()


# ----------------------------------------------------------------- 1. any input size

@pytest.mark.parametrize("size", [(1, 1), (1, 37), (37, 1), (5, 7), (37, 300), (48, 64)])
def test_panoptic_inference_at_any_size(panoptic_model, size):
    """The training crop (64x128) tiles none of these inputs; 1 px and few-pixel outputs
    also hit detectron2's post-processing limits (squeeze, top-k of 200 pixels)."""
    h, w = size
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    with torch.no_grad():
        out = panoptic_model([{"image": image, "height": h, "width": w}])[0]
    assert out["sem_seg"].shape == (19, h, w)
    assert out["panoptic_seg"][0].shape == (h, w)
    if "instances" in out:
        assert out["instances"].image_size == (h, w)
        assert out["instances"].pred_masks.shape[1:] == (h, w)
    assert out["flops"]["real"] > out["flops"]["expected"] > 0


def test_panoptic_batch_of_mixed_sizes_keeps_each_size(panoptic_model):
    sizes = [(1, 1), (64, 128), (5, 7), (37, 300)]
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8)} for h, w in sizes]
    with torch.no_grad():
        outs = panoptic_model(inputs)  # also without "height" / "width"
    assert [tuple(o["panoptic_seg"][0].shape) for o in outs] == sizes


def test_global_test_pooling_equals_detectron2_window_at_crop_size(panoptic_model):
    """At the training crop's size the window is the whole map: both choices agree."""
    from detectron2.modeling import build_model

    crop = build_model(cfg_of(PANOPTIC, "MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING", "crop"))
    crop.load_state_dict(panoptic_model.state_dict())
    crop.eval()
    inputs = [{"image": torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8),
               "height": 64, "width": 128}]
    with torch.no_grad():
        a, b = panoptic_model(inputs)[0], crop(inputs)[0]
    torch.testing.assert_close(a["sem_seg"], b["sem_seg"])
    with pytest.raises(ValueError, match="TEST_ASPP_POOLING \"global\""), torch.no_grad():
        crop([{"image": torch.zeros(3, 48, 64, dtype=torch.uint8), "height": 48, "width": 64}])


def test_unknown_test_pooling_is_refused():
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match="TEST_ASPP_POOLING='mean' is not known"):
        build_model(cfg_of(PANOPTIC, "MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING", "mean"))


@pytest.fixture(scope="module")
def panoptic_weights(panoptic_model, tmp_path_factory):
    from dyn_seg.checkpoint import DynSegCheckpointer

    folder = tmp_path_factory.mktemp("panoptic_weights")
    DynSegCheckpointer(panoptic_model, str(folder)).save("model")
    return folder / "model.pth"


def _write_images(folder: Path, sizes):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            folder / f"img{k}_{h}x{w}.png")
    return folder


def test_panoptic_demo_and_visualiser_at_odd_sizes(panoptic_weights, tmp_path):
    images = _write_images(tmp_path / "in", [(37, 300), (1, 1), (48, 64)])
    demo = load_tool("demo")
    assert demo.main(["--config-file", str(REPO / PANOPTIC), "--input", str(images),
                      "--output", str(tmp_path / "demo"), "--weights", str(panoptic_weights),
                      "--opts", *SMALL]) == 0
    assert len(list((tmp_path / "demo").glob("*.png"))) == 3
    vis = load_tool("visualize_routing")
    result = vis.main(["--config-file", str(REPO / PANOPTIC), "--input", str(images),
                       "--weights", str(panoptic_weights), "--output", str(tmp_path / "r"),
                       "--opts", *SMALL])
    assert result["failed"] == [] and result["num_images"] == 3


def test_visualiser_keeps_other_images_when_the_model_refuses_one(panoptic_weights, tmp_path):
    """With detectron2's windowed pooling a 48x64 image is refused by the model: the
    visualiser lists it under "failed" and writes the statistics of the others."""
    import json

    images = _write_images(tmp_path / "in", [(64, 128), (48, 64)])
    vis = load_tool("visualize_routing")
    result = vis.main(["--config-file", str(REPO / PANOPTIC), "--input", str(images),
                       "--weights", str(panoptic_weights), "--output", str(tmp_path / "r"),
                       "--opts", *SMALL, "MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING", "crop"])
    assert result["num_images"] == 1
    assert len(result["failed"]) == 1 and "img1_48x64.png" in result["failed"][0]
    assert "TEST_ASPP_POOLING" in result["failed"][0]
    assert json.loads((tmp_path / "r" / "routing.json").read_text())["num_images"] == 1
    assert (tmp_path / "r" / "routing.png").is_file()


# ------------------------------------------------------- 2. labels without a valid pixel

def test_all_ignore_batch_gives_zero_semantic_loss_and_zero_gradient():
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    model = build_model(tiny_cfg())
    model.train()
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
              "sem_seg": torch.full((64, 64), 255, dtype=torch.long)} for _ in range(2)]
    loss = model(batch)["loss_sem_seg"]
    assert torch.isfinite(loss) and float(loss) == 0.0
    loss.backward()
    grads = [p.grad for p in model.sem_seg_head.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_training_survives_a_batch_without_valid_label_pixel(tmp_path):
    """Both labels of the training set hold only the ignore value: every batch is
    all-ignore, and training runs to the end with finite losses (before: NaN at the
    first step, NonFiniteTrainingError advising a lower BASE_LR)."""
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from conftest import register_synthetic_train_split, tiny_cfg
    from dyn_seg.engine import Trainer

    name = register_synthetic_train_split(str(tmp_path / "data"), "all_ignore")
    try:
        for d in DatasetCatalog.get(name):
            label = np.asarray(Image.open(d["sem_seg_file_name"]))
            Image.fromarray(np.full_like(label, 255)).save(d["sem_seg_file_name"])
        cfg = tiny_cfg(**{
            "DATASETS.TRAIN": (name,), "DATASETS.TEST": (), "INPUT.MIN_SIZE_TRAIN": (32,),
            "INPUT.MAX_SIZE_TRAIN": 1000, "DATALOADER.NUM_WORKERS": 0,
            "SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 0,
            "OUTPUT_DIR": str(tmp_path / "out")})
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        assert trainer.iter == 2  # no NonFiniteTrainingError
    finally:
        DatasetCatalog.remove(name)


def test_panoptic_losses_are_finite_without_valid_pixel_or_instance(panoptic_model):
    h, w = 64, 128
    sample = {"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8),
              "sem_seg": torch.full((h, w), 255, dtype=torch.long),
              "sem_seg_weights": torch.ones(h, w), "center": torch.zeros(1, h, w),
              "center_weights": torch.zeros(h, w), "offset": torch.zeros(2, h, w),
              "offset_weights": torch.zeros(h, w)}
    panoptic_model.train()
    try:
        losses = panoptic_model([sample, dict(sample)])
    finally:
        panoptic_model.eval()
    assert {"loss_sem_seg", "loss_center", "loss_offset"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in panoptic_model.parameters()
               if p.grad is not None)
    panoptic_model.zero_grad(set_to_none=True)


def test_mask_rcnn_losses_are_finite_on_images_without_instances():
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances, PolygonMasks
    from detectron2.utils.events import EventStorage

    model = build_model(cfg_of(MASK_RCNN))
    model.train()
    batch = []
    for _ in range(2):
        inst = Instances((64, 128))
        inst.gt_boxes = Boxes(torch.zeros(0, 4))
        inst.gt_classes = torch.zeros(0, dtype=torch.long)
        inst.gt_masks = PolygonMasks([])
        batch.append({"image": torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8),
                      "instances": inst})
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_check_tool_lists_labels_without_valid_pixel(tmp_path):
    from PIL import Image

    from dyn_seg.data import check_sem_seg_dataset, is_error

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "a_label.png")
    problems = check_sem_seg_dataset(
        [{"file_name": str(tmp_path / "a.png"),
          "sem_seg_file_name": str(tmp_path / "a_label.png")}], 19, 255, progress=False)
    assert len(problems) == 1 and not is_error(problems[0])
    assert "a_label.png" in problems[0] and "no pixel with a class id" in problems[0]
