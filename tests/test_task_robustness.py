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
