"""Bad input on the panoptic, instance and classification paths (docs/BAD_INPUT.md):
inference at any size, all-ignore labels, damaged panoptic / instance / ImageNet files, and
the tools' handling of each task."""
from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PANOPTIC = "configs/Synthetic/PanopticDeepLab-Tiny.yaml"
MASK_RCNN = "configs/Synthetic/MaskRCNN-Tiny.yaml"
CLASSIFIER = "configs/Synthetic/Classification-Tiny.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 128)",
         "INPUT.MIN_SIZE_TEST", "64", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]


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
    from dyn_seg.tools import demo
    from dyn_seg.tools import visualize_routing as vis

    images = _write_images(tmp_path / "in", [(37, 300), (1, 1), (48, 64)])
    assert demo.main(["--config-file", str(REPO / PANOPTIC), "--input", str(images),
                      "--output", str(tmp_path / "demo"), "--weights", str(panoptic_weights),
                      "--opts", *SMALL]) == 0
    assert len(list((tmp_path / "demo").glob("*.png"))) == 3
    result = vis.main(["--config-file", str(REPO / PANOPTIC), "--input", str(images),
                       "--weights", str(panoptic_weights), "--output", str(tmp_path / "r"),
                       "--opts", *SMALL])
    assert result["failed"] == [] and result["num_images"] == 3


def test_visualiser_keeps_other_images_when_the_model_refuses_one(panoptic_weights, tmp_path):
    """With detectron2's windowed pooling a 48x64 image is refused by the model: the
    visualiser lists it under "failed" and writes the statistics of the others."""
    import json

    from dyn_seg.tools import visualize_routing as vis

    images = _write_images(tmp_path / "in", [(64, 128), (48, 64)])
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
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

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
    from conftest import register_synthetic_train_split, tiny_cfg
    from detectron2.data import DatasetCatalog
    from PIL import Image

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


# ------------------------------------------------------ 4. panoptic and instance data

@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from dyn_seg.synthetic import generate_synthetic_cityscapes

    return Path(generate_synthetic_cityscapes(str(tmp_path_factory.mktemp("cs")), num_train=2,
                                              num_val=1, height=64, width=128, progress=False))


@pytest.fixture
def task_data(synthetic_root, tmp_path):
    """A fresh copy of the generated scenes, registered as panoptic and instance datasets."""
    import shutil

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dyn_seg.data.panoptic import register_cityscapes_tasks

    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    names = register_cityscapes_tasks(str(root), f"robust_{uuid.uuid4().hex[:8]}")
    yield root / "cityscapes", names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _panoptic_pngs(cs: Path):
    return sorted((cs / "gtFine" / "cityscapes_panoptic_train").glob("*.png"))


def _map_first(cs, names, task="panoptic"):
    from detectron2.data import DatasetCatalog

    from dyn_seg.data.task_mappers import InstanceDatasetMapper, PanopticDatasetMapper

    if task == "panoptic":
        cfg = cfg_of(PANOPTIC, "DATASETS.TRAIN", f"('{names['panoptic_train']}',)")
        mapper = PanopticDatasetMapper(cfg)
        records = DatasetCatalog.get(names["panoptic_train"])
    else:
        mapper = InstanceDatasetMapper(cfg_of(MASK_RCNN), is_train=True)
        records = DatasetCatalog.get(names["instance_seg_train"])
    return [mapper(r) for r in records]


def test_panoptic_mapper_reads_healthy_data(task_data):
    cs, names = task_data
    out = _map_first(cs, names)
    assert {"image", "sem_seg", "center", "offset"} <= set(out[0])


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,match", [
    ("truncated", "cannot decode panoptic label file .*corrupt, truncated"),
    ("wrong_size", "size mismatch: image .* is 128x64 but its panoptic label file .* is 64x32"),
    ("palette", "panoptic label file .* has mode P"),
])
def test_damaged_panoptic_png_names_the_file_in_training(task_data, damage, match):
    from PIL import Image

    from dyn_seg.data.reader import DatasetFileError

    cs, names = task_data
    png = _panoptic_pngs(cs)[0]
    if damage == "truncated":
        _truncate(png)
    elif damage == "wrong_size":
        Image.open(png).resize((64, 32)).save(png)
    else:
        Image.open(png).convert("P").save(png)
    with pytest.raises(DatasetFileError, match=match) as info:
        _map_first(cs, names)
    assert info.value.file_name == str(png)


def test_panoptic_png_missing_mid_training_names_the_file(task_data):
    from detectron2.data import DatasetCatalog

    from dyn_seg.data.reader import DatasetFileError
    from dyn_seg.data.task_mappers import PanopticDatasetMapper

    cs, names = task_data
    records = DatasetCatalog.get(names["panoptic_train"])  # the run has started
    mapper = PanopticDatasetMapper(cfg_of(PANOPTIC, "DATASETS.TRAIN",
                                          f"('{names['panoptic_train']}',)"))
    png = records[1]["pan_seg_file_name"]
    Path(png).unlink()
    with pytest.raises(DatasetFileError, match=f"Panoptic label file not found: {png}"):
        mapper(records[1])


@pytest.mark.parametrize("damage,match", [
    ("truncated_json", "cannot parse the panoptic JSON file .*cityscapes_panoptic_train.json"),
    ("missing_json", "panoptic JSON file not found: .*cityscapes_panoptic_train.json.*"
                     "prepare_cityscapes.py"),
    ("missing_png", "panoptic dataset .*cityscapes_panoptic_train.json is missing|"
                    "1 of the 2 panoptic label PNGs .* do not exist"),
])
def test_damaged_panoptic_ground_truth_names_the_file_at_load(task_data, damage, match):
    from detectron2.data import DatasetCatalog

    from dyn_seg.data.reader import DatasetFileError

    cs, names = task_data
    gt_json = cs / "gtFine" / "cityscapes_panoptic_train.json"
    if damage == "truncated_json":
        _truncate(gt_json)
    elif damage == "missing_json":
        gt_json.unlink()
    else:
        _panoptic_pngs(cs)[-1].unlink()
    with pytest.raises(DatasetFileError, match=match):
        DatasetCatalog.get(names["panoptic_train"])


def test_degenerate_polygon_in_cityscapes_json_names_the_file(task_data):
    import json

    from detectron2.data import DatasetCatalog

    from dyn_seg.data.reader import DatasetFileError

    cs, names = task_data
    polygons = sorted((cs / "gtFine" / "train").glob("*/*_polygons.json"))[0]
    data = json.loads(polygons.read_text())
    for obj in data["objects"]:
        obj["polygon"] = obj["polygon"][:2]
    polygons.write_text(json.dumps(data))
    with pytest.raises(DatasetFileError, match="cannot read the instance annotations") as info:
        DatasetCatalog.get(names["instance_seg_train"])
    assert info.value.file_name == str(polygons)


def test_degenerate_polygon_in_a_record_names_image_and_annotation(task_data):
    from dyn_seg.data.reader import DatasetFileError
    from dyn_seg.data.task_mappers import InstanceDatasetMapper

    cs, names = task_data
    from detectron2.data import DatasetCatalog

    record = dict(DatasetCatalog.get(names["instance_seg_train"])[0])
    assert _map_first(cs, names, "instance")[0]["instances"].gt_masks is not None
    record["annotations"] = [dict(a) for a in record["annotations"]]
    record["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
    mapper = InstanceDatasetMapper(cfg_of(MASK_RCNN), is_train=True)
    with pytest.raises(DatasetFileError, match="annotation 1 .* degenerate polygon 0 of 4 "
                                               "coordinates") as info:
        mapper(record)
    assert record["file_name"] in str(info.value)


def test_check_tool_validates_every_task(task_data, tmp_path):
    """Healthy panoptic, instance and ImageNet datasets pass; damage is listed by file."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dyn_seg.data import check_dataset, generate_synthetic_imagenet, is_error, task_of_records
    from dyn_seg.data.imagenet import register_imagenet

    cs, names = task_data
    for key, task in (("panoptic_train", "panoptic"), ("instance_seg_train", "instance")):
        records = DatasetCatalog.get(names[key])
        assert task_of_records(records) == task
        assert check_dataset(records, task, 19, progress=False) == []

    root = generate_synthetic_imagenet(str(tmp_path / "inet"), num_train=1, num_val=1, size=16)
    name = f"robust_imagenet_{uuid.uuid4().hex[:8]}"
    register_imagenet(name, f"{root}/imagenet", "train")
    try:
        records = DatasetCatalog.get(name)
        assert task_of_records(records) == "classification"
        assert check_dataset(records, "classification", 10, progress=False) == []
        records[0]["label"] = 10
        found = check_dataset(records, "classification", 10, progress=False)
        assert len(found) == 1 and "label 10, not a class index 0..9" in found[0]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    from PIL import Image

    pngs = _panoptic_pngs(cs)
    _truncate(pngs[0])
    Image.open(pngs[1]).resize((64, 32)).save(pngs[1])
    found = [m for m in check_dataset(DatasetCatalog.get(names["panoptic_train"]), "panoptic",
                                      19, progress=False) if is_error(m)]
    assert len(found) == 2
    assert str(pngs[0]) in found[0] and "truncated" in found[0]
    assert str(pngs[1]) in found[1] and "size mismatch" in found[1]


def test_check_tool_command_line_on_instance_and_imagenet(synthetic_root, tmp_path):
    """The command line tells the task from the records (before: instance datasets had
    false errors, ImageNet needed stuff_classes)."""
    import shutil
    import subprocess

    from dyn_seg.data import generate_synthetic_imagenet

    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    generate_synthetic_imagenet(str(root), num_train=1, num_val=1, size=16)
    run = subprocess.run(
        [sys.executable, str(REPO / "datasets" / "check_dataset.py"), "--datasets-root",
         str(root), "--no-progress", "--workers", "1",
         "--dataset", "cityscapes_fine_instance_seg_train", "--dataset", "imagenet_train",
         "--dataset", "cityscapes_fine_panoptic_train"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "imagenet_train: 10 records checked, 0 error(s)" in run.stdout
    assert "cityscapes_fine_instance_seg_train: 2 records checked, 0 error(s)" in run.stdout
    assert "cityscapes_fine_panoptic_train: 2 records checked, 0 error(s)" in run.stdout


# ------------------------------------------------------------ 3. classification images

def _classification_mapper(is_train=False):
    from dyn_seg.data.imagenet import ClassificationDatasetMapper

    return ClassificationDatasetMapper(is_train, crop_size=16, test_resize=16)


def test_classification_reads_16_bit_rgb_png_as_8_bit(tmp_path):
    """A 16-bit-per-channel RGB PNG gives the image of its high bytes, as for segmentation
    images (a 16-bit grayscale PNG, which detectron2's read_image turned solid white, is
    refused: next test)."""
    import cv2

    rgb8 = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb8[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "flat.png"), rgb8[..., ::-1])
    mapper = _classification_mapper()
    deep = mapper({"file_name": str(tmp_path / "deep.png"), "label": 0})["image"]
    flat = mapper({"file_name": str(tmp_path / "flat.png"), "label": 0})["image"]
    torch.testing.assert_close(deep, flat)


def test_classification_refuses_16_bit_gray_and_non_images_naming_the_file(tmp_path):
    from PIL import Image

    from dyn_seg.data.reader import DatasetFileError

    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(tmp_path / "gray16.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    mapper = _classification_mapper(is_train=True)
    with pytest.raises(DatasetFileError, match=r"gray16.png has I;16 pixels.*convert it"):
        mapper({"file_name": str(tmp_path / "gray16.png"), "label": 0})
    with pytest.raises(DatasetFileError, match=r"cannot decode image file .*notes.jpg"):
        mapper({"file_name": str(tmp_path / "notes.jpg"), "label": 0})


# ------------------------------------------------------------------ 5. tools per task

def test_demo_refuses_a_classifier_clearly(tmp_path):
    from dyn_seg.tools import demo

    images = _write_images(tmp_path / "in", [(16, 16)])
    with pytest.raises(ValueError, match="is an image classifier: evaluate it with train_net"):
        demo.main(["--config-file", str(REPO / CLASSIFIER), "--input", str(images),
                   "--output", str(tmp_path / "out"), "--opts", "MODEL.DEVICE", "cpu"])


def test_demo_refuses_label_maps_of_an_instance_model_clearly(tmp_path):
    from dyn_seg.tools import demo

    images = _write_images(tmp_path / "in", [(16, 16)])
    with pytest.raises(ValueError, match="predicts instances only .* --output-format overlay"):
        demo.main(["--config-file", str(REPO / MASK_RCNN), "--input", str(images),
                   "--output", str(tmp_path / "out"), "--output-format", "trainIds",
                   "--opts", *SMALL])


def test_demo_writes_train_ids_of_a_panoptic_model(panoptic_weights, tmp_path):
    from PIL import Image

    from dyn_seg.tools import demo

    images = _write_images(tmp_path / "in", [(37, 300)])
    assert demo.main([
        "--config-file", str(REPO / PANOPTIC), "--input", str(images), "--output",
        str(tmp_path / "out"), "--output-format", "trainIds", "--weights",
        str(panoptic_weights), "--opts", *SMALL]) == 0
    ids = np.asarray(Image.open(tmp_path / "out" / "img0_37x300_trainIds.png"))
    assert ids.shape == (37, 300) and ids.max() < 19


@pytest.mark.parametrize("tool,argv,message", [
    ("benchmark", ["--iters", "0"], "argument --iters: 0 is not allowed: it must be an "
                                    "integer >= 1"),
    ("benchmark", ["--batch", "0"], "argument --batch: 0 is not allowed"),
    ("benchmark", ["--threads", "-3"], "argument --threads: -3 is not allowed: it must be an "
                                       "integer >= 0 (0: keep)"),
    ("benchmark", ["--warmup", "x"], "argument --warmup: 'x' is not an integer"),
    ("demo", ["--config-file", "c.yaml", "--input", "x", "--alpha", "1.5"],
     "argument --alpha: 1.5 is not allowed: it must be in [0, 1]"),
    ("demo", ["--config-file", "c.yaml", "--input", "x", "--route-size", "0"],
     "argument --route-size: 0 is not allowed: it must be in (0, 1]"),
    ("visualize_routing", ["--input", "x", "--output", "y", "--max-images", "-2"],
     "argument --max-images: -2 is not allowed"),
    ("budget_sweep", ["--points", "raw", "--output", "y", "--jobs", "0"],
     "argument --jobs: 0 is not allowed"),
    ("task_learning_check", ["--task", "panoptic", "--output", "y", "--num-val", "0"],
     "argument --num-val: 0 is not allowed"),
])
def test_tools_validate_numeric_arguments(tool, argv, message, capsys):
    # the scripts are thin: the sweep is dyn_seg.benchmark's, every other program dyn_seg.tools'
    package = "dyn_seg.benchmark" if tool == "budget_sweep" else "dyn_seg.tools"
    module = importlib.import_module(f"{package}.{tool}")
    parser = getattr(module, "get_parser", None) or getattr(module, "argument_parser", None)
    parse = getattr(module, "parse_args", None) or (lambda a: parser().parse_args(a))
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
