"""The synthetic Cityscapes generator: layout, detectron2 loading, evaluation, determinism."""
from __future__ import annotations

import importlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyn_seg.data import generate_synthetic_cityscapes
from dyn_seg.synthetic import MARKER_NAME, SPLIT_CITIES

REPO = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL, HEIGHT, WIDTH = 6, 4, 64, 128
GT_SUFFIXES = (
    "_gtFine_labelIds.png",
    "_gtFine_labelTrainIds.png",
    "_gtFine_instanceIds.png",
    "_gtFine_color.png",
    "_gtFine_polygons.json",
)


def _generate(root: Path, **kwargs) -> str:
    params = dict(num_train=NUM_TRAIN, num_val=NUM_VAL, height=HEIGHT, width=WIDTH, seed=0)
    params.update(kwargs)
    return generate_synthetic_cityscapes(str(root), progress=False, **params)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert _generate(root) == os.path.abspath(root)
    return root


def _frames(root: Path, split: str):
    return sorted((root / "cityscapes" / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


def _gt_file(image_file: Path, suffix: str) -> Path:
    stem = image_file.name[: -len("_leftImg8bit.png")]
    parts = image_file.parts
    gt_dir = Path(*parts[:-4]) / "gtFine" / parts[-3] / parts[-2]
    return gt_dir / (stem + suffix)


def _load_semantic(root: Path, split: str):
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    cs = root / "cityscapes"
    return load_cityscapes_semantic(
        str(cs / "leftImg8bit" / split), str(cs / "gtFine" / split)
    )


def test_layout(synth_root: Path):
    cs = synth_root / "cityscapes"
    assert (cs / MARKER_NAME).is_file()
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        cities = sorted(p.name for p in (cs / "leftImg8bit" / split).iterdir())
        assert cities == sorted(SPLIT_CITIES[split])
        assert sorted(p.name for p in (cs / "gtFine" / split).iterdir()) == cities
        frames = _frames(synth_root, split)
        assert len(frames) == count
        for f in frames:
            city = f.parent.name
            assert f.name.startswith(f"{city}_000000_") and len(f.name.split("_")) == 4
            with Image.open(f) as img:
                assert img.mode == "RGB" and img.size == (WIDTH, HEIGHT)
            for suffix in GT_SUFFIXES:
                assert _gt_file(f, suffix).is_file(), suffix
            with open(_gt_file(f, "_gtFine_polygons.json")) as fh:
                poly = json.load(fh)
            assert poly["imgHeight"] == HEIGHT and poly["imgWidth"] == WIDTH
            assert len(poly["objects"]) >= 3
            for obj in poly["objects"]:
                assert isinstance(obj["label"], str) and len(obj["polygon"]) >= 3


def test_detectron2_loader(synth_root: Path):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        dicts = _load_semantic(synth_root, split)
        assert len(dicts) == count
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
            assert d["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
            assert (d["height"], d["width"]) == (HEIGHT, WIDTH)


def test_label_values(synth_root: Path):
    from cityscapesscripts.helpers.labels import id2label

    present = set()
    for f in _frames(synth_root, "train") + _frames(synth_root, "val"):
        train_ids = np.asarray(Image.open(_gt_file(f, "_gtFine_labelTrainIds.png")))
        label_ids = np.asarray(Image.open(_gt_file(f, "_gtFine_labelIds.png")))
        inst_ids = np.asarray(Image.open(_gt_file(f, "_gtFine_instanceIds.png")))
        values = set(np.unique(train_ids).tolist())
        assert values <= set(range(19)) | {255}
        present |= values - {255}
        # train ids follow cityscapesscripts' mapping of the label ids
        for label_id in np.unique(label_ids):
            train_id = id2label[int(label_id)].trainId
            expected = train_id if 0 <= train_id < 255 else 255
            assert np.all(train_ids[label_ids == label_id] == expected)
        # instance ids: id * 1000 + k for objects of thing classes, the label id elsewhere
        inst_ids = inst_ids.astype(np.int64)
        is_inst = inst_ids >= 1000
        assert np.array_equal(inst_ids[is_inst] // 1000, label_ids[is_inst])
        assert np.array_equal(inst_ids[~is_inst], label_ids[~is_inst])
    assert len(present) >= 8, present


def test_labels_match_polygons(synth_root: Path):
    """cityscapesscripts' createTrainIdLabelImgs would rebuild the same label images."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    for f in _frames(synth_root, "val"):
        annotation = Annotation()
        annotation.fromJsonFile(str(_gt_file(f, "_gtFine_polygons.json")))
        for encoding, suffix in (("trainIds", "_gtFine_labelTrainIds.png"),
                                 ("ids", "_gtFine_labelIds.png")):
            drawn = np.asarray(createLabelImage(annotation, encoding))
            assert np.array_equal(drawn, np.asarray(Image.open(_gt_file(f, suffix))))


def _read_all(root: Path) -> dict:
    out = {}
    for path in sorted((root / "cityscapes").rglob("*")):
        if path.is_file():
            key = str(path.relative_to(root))
            if path.suffix == ".png":
                out[key] = np.asarray(Image.open(path))
            else:
                out[key] = path.read_text()
    return out


def test_deterministic_by_seed(tmp_path: Path):
    kwargs = dict(num_train=2, num_val=1)
    _generate(tmp_path / "a", **kwargs)
    _generate(tmp_path / "b", **kwargs)
    _generate(tmp_path / "c", seed=1, **kwargs)
    a, b, c = (_read_all(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    image = "cityscapes/leftImg8bit/train/synthtown/synthtown_000000_000000_leftImg8bit.png"
    assert not np.array_equal(a[image], c[image])


def test_marker_skips_regeneration(tmp_path: Path):
    kwargs = dict(num_train=2, num_val=1)
    _generate(tmp_path, **kwargs)
    cs = tmp_path / "cityscapes"
    image = next((cs / "leftImg8bit" / "train").glob("*/*.png"))
    image.unlink()
    _generate(tmp_path, **kwargs)  # complete marker, same parameters: nothing is written
    assert not image.exists()

    _generate(tmp_path, num_train=3, num_val=1)  # new parameters: regenerated from scratch
    assert image.exists()
    assert len(_frames(tmp_path, "train")) == 3
    _generate(tmp_path, **kwargs)  # fewer frames: no stale frame is left behind
    assert len(_frames(tmp_path, "train")) == 2

    (cs / MARKER_NAME).unlink()  # as after an interrupted run
    image.unlink()
    _generate(tmp_path, **kwargs)
    assert image.exists() and (cs / MARKER_NAME).is_file()


def test_refuses_foreign_cities(tmp_path: Path):
    (tmp_path / "cityscapes" / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="aachen"):
        _generate(tmp_path, num_train=1, num_val=1)
    assert (tmp_path / "cityscapes" / "leftImg8bit" / "train" / "aachen").is_dir()


def _perfect_outputs(d: dict) -> dict:
    """A model output whose argmax is the ground truth (ignored pixels predict class 0)."""
    gt = torch.as_tensor(np.asarray(Image.open(d["sem_seg_file_name"]), dtype=np.int64))
    gt[gt == 255] = 0
    logits = torch.nn.functional.one_hot(gt, 19).permute(2, 0, 1).float()
    return {"sem_seg": logits}


def test_cityscapes_evaluator_on_val(synth_root: Path):
    """detectron2's CityscapesSemSegEvaluator runs on the generated val split as it is."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import CityscapesSemSegEvaluator

    cs = synth_root / "cityscapes"
    name = f"synthetic_cityscapes_val_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: _load_semantic(synth_root, "val"))
    MetadataCatalog.get(name).set(
        image_dir=str(cs / "leftImg8bit" / "val"),
        gt_dir=str(cs / "gtFine" / "val"),
        evaluator_type="cityscapes_sem_seg",
        ignore_label=255,
    )
    try:
        evaluator = CityscapesSemSegEvaluator(name)
        evaluator.reset()
        for d in DatasetCatalog.get(name):
            evaluator.process([d], [_perfect_outputs(d)])
        results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results["sem_seg"]["IoU"] == pytest.approx(100.0)
    assert results["sem_seg"]["IoU_sup"] == pytest.approx(100.0)


def test_sem_seg_evaluator_on_train(synth_root: Path):
    """detectron2's SemSegEvaluator works given a numpy-2 safe label loader."""
    from cityscapesscripts.helpers.labels import labels
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    def load_label(path: str, dtype=None) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img, dtype=dtype).copy()

    name = f"synthetic_cityscapes_train_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: _load_semantic(synth_root, "train"))
    MetadataCatalog.get(name).set(
        stuff_classes=[l.name for l in labels if l.trainId != 255 and l.trainId >= 0],
        ignore_label=255,
        evaluator_type="sem_seg",
    )
    try:
        evaluator = SemSegEvaluator(name, distributed=False, sem_seg_loading_fn=load_label)
        evaluator.reset()
        for d in DatasetCatalog.get(name):
            evaluator.process([d], [_perfect_outputs(d)])
        results = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results["mIoU"] == pytest.approx(100.0)
    assert results["pACC"] == pytest.approx(100.0)


def _load_script(name: str):
    """The program of ``datasets/NAME.py``."""
    return importlib.import_module(f"dyn_seg.tools.{name}")


def test_generate_cli(tmp_path: Path, capsys):
    cli = _load_script("generate_synthetic_cityscapes")
    argv = ["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--height", "32",
            "--width", "64", "--no-progress"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == os.path.abspath(tmp_path)
    assert len(_frames(tmp_path, "train")) == 2 and len(_frames(tmp_path, "val")) == 1
    assert cli.main(argv[:2] + ["--num-train", "0"]) == 2


def test_prepare_cityscapes_cli(tmp_path: Path, monkeypatch, capsys):
    cli = _load_script("prepare_cityscapes")
    assert cli.main(["--root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    _generate(tmp_path, num_train=1, num_val=1)
    label = next((tmp_path / "cityscapes" / "gtFine" / "val").glob("*/*_labelTrainIds.png"))
    expected = np.asarray(Image.open(label))
    label.unlink()
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    assert cli.main(["--root", str(tmp_path)]) == 0
    assert np.array_equal(np.asarray(Image.open(label)), expected)
