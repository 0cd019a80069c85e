"""DefaultPredictor and the demo tool on raw images of any size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from PIL import Image

from dyn_seg.checkpoint import CheckpointError
from dyn_seg.tools import demo


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised tiny model saved as a detectron2 checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    return str(path)


def _predictor_cfg(weights_path):
    return tiny_cfg(**{"MODEL.WEIGHTS": weights_path, "INPUT.MIN_SIZE_TEST": 128,
                       "INPUT.MAX_SIZE_TEST": 1024})


@pytest.mark.parametrize("height,width", [(333, 517), (64, 64), (517, 333)])
def test_default_predictor_returns_scores_at_the_raw_image_size(weights, height, width):
    predictor = DefaultPredictor(_predictor_cfg(weights))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)

    out = predictor(image)

    assert out["sem_seg"].shape == (19, height, width)
    assert torch.isfinite(out["sem_seg"]).all()
    assert out["flops"]["real"] > out["flops"]["expected"] > 0


def test_default_predictor_loads_the_given_weights(weights):
    predictor = DefaultPredictor(_predictor_cfg(weights))
    saved = torch.load(weights, weights_only=True)["model"]
    for name, value in predictor.model.state_dict().items():
        torch.testing.assert_close(value, saved[name])


def test_demo_writes_an_overlay_of_each_image_with_its_gflops(weights, tmp_path, capsys):
    inputs = tmp_path / "images"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a.png", (333, 517)), ("b.jpg", (96, 160))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(inputs / name)
    config = tmp_path / "tiny.yaml"
    config.write_text(_predictor_cfg(weights).dump())

    demo.main(["--config-file", str(config), "--input", str(inputs), "--output",
               str(tmp_path / "out"), "--show-flops", "--opts",
               "DATASETS.TEST", "('cityscapes_fine_sem_seg_val',)"])

    assert Image.open(tmp_path / "out" / "a.png").size == (517, 333)
    assert Image.open(tmp_path / "out" / "b.png").size == (160, 96)
    printed = capsys.readouterr().out
    assert "a.png: 517x333" in printed and "real GFLOPs" in printed


def test_demo_draws_the_route_small_in_the_bottom_right_corner(weights, tmp_path):
    inputs = tmp_path / "images"
    inputs.mkdir()
    image = np.random.default_rng(2).integers(0, 256, (200, 400, 3), dtype=np.uint8)
    Image.fromarray(image).save(inputs / "street.png")
    config = tmp_path / "tiny.yaml"
    config.write_text(_predictor_cfg(weights).dump())
    common = ["--config-file", str(config), "--input", str(inputs), "--show-flops"]

    demo.main(common + ["--output", str(tmp_path / "plain")])
    demo.main(common + ["--output", str(tmp_path / "route"), "--show-route",
                        "--route-size", "0.5"])

    plain = np.asarray(Image.open(tmp_path / "plain" / "street.png"))
    route = np.asarray(Image.open(tmp_path / "route" / "street.png"))
    assert plain.shape == route.shape == (200, 400, 3)
    rows, cols = np.nonzero((plain != route).any(axis=2))
    # 200 px of route plus its 1 px frame, 4 px from the right and bottom edges
    assert (cols.min(), cols.max(), rows.max()) == (400 - 4 - 200 - 2, 400 - 4 - 1, 200 - 4 - 1)
    assert 0.4 < (rows.max() - rows.min()) / (cols.max() - cols.min()) < 0.8
    assert rows.min() > 40  # below the GFLOPs text at the top left, which stays as it was
    corner = route[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert (corner == 255).all(axis=2).mean() > 0.3  # the route's white background


def test_demo_refuses_missing_weights(weights, tmp_path):
    cfg = _predictor_cfg(str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="missing.pth"):
        demo.build_predictor(cfg)
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        demo.build_predictor(cfg)


def test_demo_input_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        demo.collect_inputs([str(tmp_path / "nothing-here" / "*.png")])
