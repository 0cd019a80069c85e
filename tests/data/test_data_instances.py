"""Instances and panoptic ground truth of the generated Cityscapes-layout data."""
from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyn_seg.data.panoptic import create_cityscapes_panoptic, register_cityscapes_tasks
from dyn_seg.synthetic import generate_synthetic_cityscapes

THING_LABEL_IDS = {24: "person", 25: "rider", 26: "car", 33: "bicycle"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inst")
    generate_synthetic_cityscapes(str(root), num_train=8, num_val=2, height=64, width=128,
                                  progress=False)
    return root


def test_instance_ids_and_polygons(root: Path):
    """Every object of a thing class is one polygon and its own id labelId * 1000 + k."""
    seen = Counter()
    for inst_file in sorted((root / "cityscapes" / "gtFine").glob("*/*/*_instanceIds.png")):
        ids = np.asarray(Image.open(inst_file))
        assert ids.dtype == np.uint16
        labels = np.asarray(Image.open(str(inst_file).replace("instanceIds", "labelIds")))
        with open(str(inst_file).replace("instanceIds.png", "polygons.json")) as f:
            objects = json.load(f)["objects"]
        polygons_per_class = Counter(o["label"] for o in objects)
        for label_id, name in THING_LABEL_IDS.items():
            inst = np.unique(ids[labels == label_id])
            assert np.all(inst // 1000 == label_id) and np.all(inst >= 1000)
            # ids are k = 0, 1, ... in drawing order; covered objects have no pixels
            assert np.all(inst % 1000 < polygons_per_class[name])
            seen[name] += len(inst)
    assert all(seen[name] > 0 for name in THING_LABEL_IDS.values()), seen


def test_panoptic_files_match_instance_ids(root: Path):
    from panopticapi.utils import rgb2id

    gt = root / "cityscapes" / "gtFine"
    for split, count in (("train", 8), ("val", 2)):
        with open(gt / f"cityscapes_panoptic_{split}.json") as f:
            pan = json.load(f)
        assert len(pan["annotations"]) == count
        for ann in pan["annotations"]:
            pan_ids = rgb2id(np.asarray(Image.open(gt / f"cityscapes_panoptic_{split}" /
                                                   ann["file_name"])))
            inst_file = next(gt.glob(f"{split}/*/{ann['image_id']}_gtFine_instanceIds.png"))
            inst_ids = np.asarray(Image.open(inst_file)).astype(np.int64)
            for seg in ann["segments_info"]:
                mask = pan_ids == seg["id"]
                assert mask.sum() == seg["area"] > 0
                assert np.all(inst_ids[mask] == seg["id"])
                assert (seg["id"] >= 1000) == (seg["category_id"] in THING_LABEL_IDS)


def test_detectron2_reads_panoptic_and_instances(root: Path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = register_cityscapes_tasks(str(root), f"test_inst_{uuid.uuid4().hex[:8]}")
    try:
        pan = DatasetCatalog.get(names["panoptic_train"])
        assert len(pan) == 8
        meta = MetadataCatalog.get(names["panoptic_train"])
        assert meta.evaluator_type == "cityscapes_panoptic_seg"
        # the loader maps category ids to contiguous (train) ids: person 11, rider 12, car 13,
        # bicycle 18
        thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
        things = {s["category_id"] for d in pan for s in d["segments_info"] if s["id"] >= 1000}
        assert {11, 12, 13, 18} <= things <= thing_ids

        inst = DatasetCatalog.get(names["instance_seg_train"])
        classes = Counter(a["category_id"] for d in inst for a in d["annotations"])
        # person, rider, car, bicycle in detectron2's Cityscapes instance ids
        assert {0, 1, 2, 7} <= set(classes), classes
        for d in inst:
            for a in d["annotations"]:
                x0, y0, x1, y1 = a["bbox"]
                assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 64
    finally:
        for name in names.values():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_prepare_cityscapes_rewrites_panoptic(root: Path, tmp_path: Path, monkeypatch):
    from dyn_seg.tools import prepare_cityscapes as cli

    generate_synthetic_cityscapes(str(tmp_path), num_train=1, num_val=1, height=32, width=64,
                                  progress=False)
    gt = tmp_path / "cityscapes" / "gtFine"
    expected = json.loads((gt / "cityscapes_panoptic_val.json").read_text())
    png = next((gt / "cityscapes_panoptic_val").glob("*.png"))
    pixels = np.asarray(Image.open(png))
    (gt / "cityscapes_panoptic_val.json").unlink()
    png.unlink()
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    assert cli.main(["--root", str(tmp_path)]) == 0
    assert json.loads((gt / "cityscapes_panoptic_val.json").read_text()) == expected
    assert np.array_equal(np.asarray(Image.open(png)), pixels)


def test_missing_instance_ids_named(tmp_path: Path):
    (tmp_path / "gtFine" / "val" / "city").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="instanceIds"):
        create_cityscapes_panoptic(str(tmp_path))
