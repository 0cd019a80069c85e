"""The paths users take: the demo over folders, one image reader everywhere, label output
for the Cityscapes evaluation, readable overlays, tools that agree, start-up warnings and
clear errors for a missing dataset root or a warning-free start."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model
from PIL import Image

from dyn_seg.data import check_sem_seg_dataset, is_error
from dyn_seg.data.reader import DatasetFileError, check_image_array, read_image_file
from dyn_seg.data.robust_mapper import DynSegDatasetMapper
from dyn_seg.tools import analyze_model, benchmark, visualize_routing
from dyn_seg.tools import demo as demo_tool

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    return demo_tool


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A tiny random model saved as a checkpoint, and its config (test size 64)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, folder / "model.pth")
    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 256,
                      "DATASETS.TEST": ("cityscapes_fine_sem_seg_val",)})
    (folder / "tiny.yaml").write_text(cfg.dump())
    return str(folder / "tiny.yaml"), str(folder / "model.pth")


def _rgb(path: Path, size=(48, 64), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _float_tiff(path: Path) -> Path:
    Image.fromarray(np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)).save(path)
    return path


def _gray16(path: Path) -> Path:
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(path)
    return path


# ---------------------------------------------------------------- demo over folders


def test_demo_outputs_mirror_input_paths_and_never_overwrite(demo, config, tmp_path):
    cfg, weights = config
    root = tmp_path / "in"
    files = [_rgb(root / "a" / "x.png", seed=1), _rgb(root / "b" / "x.png", seed=2),
             _rgb(root / "a" / "x.jpg", seed=3)]
    for inputs in ([str(root)], [str(root / "a"), str(root / "b")]):
        out = tmp_path / f"out{len(inputs)}"
        assert demo.main(["--config-file", cfg, "--weights", weights, "--input", *inputs,
                          "--output", str(out)]) == 0
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
        assert written == ["a/x.jpg.png", "a/x.png.png", "b/x.png"]
        pictures = [np.asarray(Image.open(out / name)) for name in written]
        assert not np.array_equal(pictures[1], pictures[2])  # different inputs, both kept
    assert len(files) == 3


def test_demo_reports_unreadable_images_processes_the_rest_and_fails(demo, config, tmp_path,
                                                                      capsys):
    cfg, weights = config
    root = tmp_path / "in"
    _rgb(root / "good.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _float_tiff(root / "float.tif")
    _gray16(root / "deep.png")
    _rgb(root / "later.png", seed=4)

    status = demo.main(["--config-file", cfg, "--input", str(root), "--output",
                        str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights])

    assert status == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "later.png"]
    err = capsys.readouterr().err
    assert "3 of 5 images failed" in err
    for name, reason in (("corrupt.png", "cannot decode"), ("float.tif", "F pixels"),
                         ("deep.png", "I;16 pixels")):
        line = next(line for line in err.splitlines() if line.strip().startswith(
            str(root / name)))
        assert reason in line


# ---------------------------------------------------------------- one reader


def test_16_bit_and_float_images_are_refused_the_same_way_everywhere(tmp_path):
    float_tif = _float_tiff(tmp_path / "float.tif")
    gray16 = _gray16(tmp_path / "deep.png")
    label = tmp_path / "gt.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(label)
    for image in (float_tif, gray16):
        with pytest.raises(DatasetFileError, match="will not guess how to scale"):
            read_image_file(str(image))  # the training loader's reader
        record = {"file_name": str(image), "sem_seg_file_name": str(label),
                  "height": 48, "width": 64}
        problems = check_sem_seg_dataset([record], num_classes=3, progress=False)
        assert [p for p in problems if is_error(p)], problems  # the checker refuses it too
    # arrays handed to a predictor: uint16 and float are refused, uint8 passes
    for array in (np.full((8, 8, 3), 40000, np.uint16), np.full((8, 8, 3), 0.5, np.float32)):
        with pytest.raises(ValueError, match=rf"uint8.*got {array.dtype}.*will not guess"):
            check_image_array(array, "frame.png")
    ok = np.zeros((8, 8, 3), np.uint8)
    assert check_image_array(ok) is ok


def test_checker_and_loader_agree_on_exif_orientation(tmp_path):
    """A JPEG stored 64x48 with EXIF orientation 6 (rotate 90) is 48x64 upright: training
    reads it upright, so its 48-wide label map matches and the checker says so too."""
    image = Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "photo.jpg", exif=exif)
    Image.fromarray(np.zeros((64, 48), np.uint8)).save(tmp_path / "gt.png")
    record = {"file_name": str(tmp_path / "photo.jpg"),
              "sem_seg_file_name": str(tmp_path / "gt.png"), "height": 64, "width": 48}

    mapper = DynSegDatasetMapper(is_train=False, augmentations=[], image_format="BGR",
                                 num_classes=3)
    assert mapper(record)["image"].shape == (3, 64, 48)
    assert check_sem_seg_dataset([record], num_classes=3, progress=False) == []


# ---------------------------------------------------------------- label output


def test_label_output_is_what_the_cityscapes_evaluation_finds(demo, config, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import id2label

    from dyn_seg.data import generate_synthetic_cityscapes

    cfg, weights = config
    root = Path(generate_synthetic_cityscapes(str(tmp_path / "data"), num_train=1, num_val=2,
                                              height=64, width=128, progress=False))
    images = root / "cityscapes" / "leftImg8bit" / "val"
    outputs = {}
    for fmt in ("labelIds", "trainIds"):
        outputs[fmt] = tmp_path / fmt
        assert demo.main(["--config-file", cfg, "--weights", weights, "--input", str(images),
                          "--output", str(outputs[fmt]), "--output-format", fmt]) == 0

    ground_truth = sorted((root / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    assert len(ground_truth) == 2
    args = cs_eval.CArgs()
    args.predictionPath, args.predictionWalk = str(outputs["labelIds"]), None
    for gt in ground_truth:
        # the evaluation script's own search: exactly one prediction per ground truth
        prediction = cs_eval.getPrediction(args, str(gt))
        label_ids = np.asarray(Image.open(prediction))
        assert label_ids.dtype == np.uint8 and label_ids.shape == (64, 128)
        assert prediction.startswith(str(outputs["labelIds"] / gt.parent.name))
        train_ids = np.asarray(Image.open(next(outputs["trainIds"].rglob(
            gt.name.replace("_gtFine_labelIds", "_trainIds")))))
        to_train = np.vectorize(lambda i: id2label[int(i)].trainId)
        np.testing.assert_array_equal(to_train(label_ids), train_ids)
        assert train_ids.max() < 19
    # colour overlays stay the default
    overlay_dir = tmp_path / "overlay"
    demo.main(["--config-file", cfg, "--weights", weights, "--input", str(images),
               "--output", str(overlay_dir)])
    overlay = Image.open(next(overlay_dir.rglob("*_leftImg8bit.png")))
    assert overlay.mode == "RGB"


def test_label_ids_need_the_cityscapes_classes(demo, config, tmp_path):
    cfg, weights = config
    _rgb(tmp_path / "in" / "x.png")
    with pytest.raises(ValueError, match="NUM_CLASSES=5.*trainIds"):
        demo.main(["--config-file", cfg, "--weights", weights, "--input", str(tmp_path / "in"),
                   "--output-format", "labelIds", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"])


# ---------------------------------------------------------------- drawing


def test_class_names_contrast_with_their_box():
    from detectron2.data.catalog import Metadata
    from detectron2.utils.visualizer import Visualizer

    from dyn_seg.visualization.overlay import SegmentationVisualizer, contrast_ratio

    # Cityscapes' dark classes: road, car, sky-like blue, and a light one
    colors = [[128, 64, 128], [0, 0, 142], [70, 130, 180], [220, 220, 0]]
    meta = Metadata(name="contrast_test", stuff_classes=["road", "car", "sky", "sign"],
                    stuff_colors=colors)
    labels = np.repeat(np.arange(4), 64).reshape(1, 256).repeat(64, 0)
    image = np.full((64, 256, 3), 90, np.uint8)

    def ratios(visualizer_class):
        vis = visualizer_class(image, meta)
        vis.draw_sem_seg(labels, alpha=0.6)
        texts = vis.output.ax.texts
        assert len(texts) == 4
        return [contrast_ratio(t.get_color(), t.get_bbox_patch().get_facecolor()[:3])
                for t in texts]

    assert min(ratios(SegmentationVisualizer)) >= 4.5  # WCAG AA for text
    assert min(ratios(Visualizer)) < 4.5  # detectron2's class-coloured text on black


def test_predictor_setup_does_not_claim_to_start_from_scratch(demo, config, caplog):
    from detectron2.config import get_cfg

    from dyn_seg import add_dynamic_routing_config

    cfg_file, weights = config
    cfg = get_cfg()
    add_dynamic_routing_config(cfg)
    cfg.merge_from_file(cfg_file)
    cfg.MODEL.WEIGHTS = weights
    with caplog.at_level(logging.INFO):
        demo.build_predictor(cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert any(weights in m for m in messages)  # the real weights are loaded, and said so
    assert not any("from scratch" in m for m in messages)


# ---------------------------------------------------------------- tools agree


def test_tools_take_size_weights_and_overrides_the_same_way():
    from dyn_seg.utils import cli

    analyze, visualize, demo = analyze_model, visualize_routing, demo_tool
    for size in (["64x128"], ["64", "128"]):
        a = cli.parse_tool_args(analyze.get_parser(), ["--size", *size, "--weights", "w.pth",
                                                       "MODEL.DEVICE", "cpu"])
        b = benchmark.parse_args(["--size", *size, "--weights", "w.pth", "MODEL.DEVICE", "cpu"])
        for args in (a, b):
            assert (args.size, args.weights, args.opts) == ((64, 128), "w.pth",
                                                           ["MODEL.DEVICE", "cpu"])
    for argv in (["--weights", "w.pth", "MODEL.DEVICE", "cpu"],
                 ["--opts", "MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cpu"]):
        v = cli.parse_tool_args(visualize.get_parser(), ["--input", "x", "--output", "o", *argv])
        d = demo.parse_args(["--config-file", "c.yaml", "--input", "x", *argv])
        for args in (v, d):
            assert (args.weights, args.opts) == ("w.pth", ["MODEL.DEVICE", "cpu"])
    assert visualize.IMAGE_EXTENSIONS is cli.IMAGE_EXTENSIONS
    assert not hasattr(demo, "IMAGE_EXTENSIONS") or demo.IMAGE_EXTENSIONS is cli.IMAGE_EXTENSIONS


# ---------------------------------------------------------------- training start-up


def test_start_up_warns_about_a_crop_larger_than_the_images_and_a_wrong_flops_all():
    from detectron2.data import DatasetCatalog

    from dyn_seg.engine.startup_checks import run_startup_checks
    from dyn_seg.modeling.meta_arch.analysis import all_open_flops

    name = "startup_check_128x256"
    DatasetCatalog.register(name, lambda: [{"file_name": "x.png", "height": 128, "width": 256}])
    try:
        good = tiny_cfg(**{"DATASETS.TRAIN": (name,), "INPUT.MIN_SIZE_TRAIN": (96, 128, 160),
                           "INPUT.MAX_SIZE_TRAIN": 512, "INPUT.CROP.ENABLED": True,
                           "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": [128, 256],
                           "MODEL.BUDGET.CONSTRAIN": True})
        model = build_model(good)
        good.MODEL.BUDGET.FLOPS_ALL = all_open_flops(model, (128, 256))["expected"]
        assert run_startup_checks(good, model) == []

        bad = good.clone()
        bad.INPUT.CROP.SIZE = [512, 1024]
        flops, crop = run_startup_checks(bad, model)
        assert "INPUT.CROP.SIZE (512, 1024)" in crop and "256x128" in crop
        assert "at most 320x160" in crop and 'INPUT.CROP.SIZE "(160, 320)"' in crop
        expected = all_open_flops(model, (512, 1024))["expected"]
        assert f"MODEL.BUDGET.FLOPS_ALL={bad.MODEL.BUDGET.FLOPS_ALL:g}" in flops
        assert f"{expected:.1f} MFLOPs" in flops and "512x1024" in flops
        assert f"Fix: MODEL.BUDGET.FLOPS_ALL {expected:.1f}" in flops and "0.81 with" in flops
    finally:
        DatasetCatalog.remove(name)


# ---------------------------------------------------------------- errors and warnings


def test_missing_dataset_root_names_the_variable_folder_and_readme(monkeypatch, tmp_path):
    from detectron2.data import DatasetCatalog

    from dyn_seg.data.roots import DatasetRootError, explain_missing_dataset_roots

    assert DatasetCatalog["cityscapes_fine_sem_seg_train"].explains_missing_root
    name = "root_check_dataset"
    missing = str(tmp_path / "nowhere" / "cityscapes" / "leftImg8bit" / "train")

    def load():
        return os.listdir(missing)

    DatasetCatalog.register(name, load)
    try:
        explain_missing_dataset_roots()
        monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
        with pytest.raises(DatasetRootError) as err:
            DatasetCatalog.get(name)
        text = str(err.value)
        assert "DETECTRON2_DATASETS is not set" in text and os.path.abspath("datasets") in text
        assert missing in text and "datasets/README.md" in text
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
        with pytest.raises(DatasetRootError, match="points at nothing.*nowhere does not exist"):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)


def test_import_wraps_only_datasets_read_from_the_dataset_root():
    """``import dyn_seg`` leaves a user's own registrations (made before it) as they are."""
    code = ("from detectron2.data import DatasetCatalog\n"
            "def mine():\n    return []\n"
            "DatasetCatalog.register('my_dataset', mine)\n"
            "import dyn_seg\n"
            "assert DatasetCatalog['my_dataset'] is mine\n"
            "assert DatasetCatalog['cityscapes_fine_sem_seg_train'].explains_missing_root\n"
            "assert DatasetCatalog['voc_2012_sem_seg_train'].explains_missing_root\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("command", [["train_net.py", "--help"], ["tools/demo.py", "--help"]])
def test_entry_points_do_not_print_the_torch_jit_script_warning(command):
    env = dict(os.environ, PYTHONWARNINGS="default")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch.jit.script" not in proc.stderr
