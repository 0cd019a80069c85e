"""The dataset checker and the PASCAL VOC registration."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyn_seg.data import check_sem_seg_dataset, is_error
from dyn_seg.data.voc import (
    VOC_CLASSES,
    VOC_COLORS,
    convert_voc_labels,
    register_pascal_voc_sem_seg,
    voc_palette,
)


def _image(path: Path, size=(32, 24), mode="RGB") -> str:
    w, h = size
    rng = np.random.default_rng(0)
    if mode == "RGB":
        array = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    elif mode == "L":
        array = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    else:  # 16-bit grayscale
        array = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
    Image.fromarray(array).save(path)
    return str(path)


def _label(path: Path, values=(0, 1, 2, 255), size=(32, 24)) -> str:
    w, h = size
    array = np.resize(np.asarray(values, dtype=np.uint8), h * w).reshape(h, w)
    Image.fromarray(array).save(path)
    return str(path)


def _record(image: str, label: str, size=(32, 24)) -> dict:
    return {"file_name": image, "sem_seg_file_name": label, "width": size[0], "height": size[1]}


def test_clean_dataset_has_no_problems(tmp_path: Path):
    records = [_record(_image(tmp_path / f"{i}.png"), _label(tmp_path / f"{i}_gt.png"))
               for i in range(3)]
    assert check_sem_seg_dataset(records, num_classes=3, progress=False) == []


def test_reports_every_problem_in_one_pass(tmp_path: Path):
    good = _record(_image(tmp_path / "good.png"), _label(tmp_path / "good_gt.png"))

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    truncated = tmp_path / "truncated.png"
    _image(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    missing_label = tmp_path / "missing_gt.png"
    bad_values = _label(tmp_path / "bad_gt.png", values=(0, 1, 42, 200, 255))
    small_label = _label(tmp_path / "small_gt.png", size=(16, 12))
    records = [
        good,
        _record(str(corrupt), _label(tmp_path / "corrupt_gt.png")),
        _record(str(truncated), _label(tmp_path / "truncated_gt.png")),
        _record(_image(tmp_path / "nolabel.png"), str(missing_label)),
        _record(str(tmp_path / "absent.png"), _label(tmp_path / "absent_gt.png")),
        _record(_image(tmp_path / "bad.png"), bad_values),
        _record(_image(tmp_path / "mismatch.png"), small_label),
        _record(_image(tmp_path / "gray.png", mode="L"), _label(tmp_path / "gray_gt.png")),
        _record(_image(tmp_path / "deep.png", mode="I;16"), _label(tmp_path / "deep_gt.png")),
        {"file_name": _image(tmp_path / "nokey.png")},
    ]
    problems = check_sem_seg_dataset(records, num_classes=19, progress=False, num_workers=2)
    errors = [p for p in problems if is_error(p)]
    warnings = [p for p in problems if not is_error(p)]

    def one(messages, *needles):
        found = [m for m in messages if all(n in m for n in needles)]
        assert len(found) == 1, (needles, problems)
        return found[0]

    one(errors, "corrupt", str(corrupt))
    one(errors, "corrupt", str(truncated))
    one(errors, "missing label file", str(missing_label))
    one(errors, "missing image file", str(tmp_path / "absent.png"))
    message = one(errors, bad_values)
    assert "42" in message and "200" in message and "255" not in message.split(":")[-1]
    message = one(errors, "size mismatch", small_label)
    assert "32x24" in message and "16x12" in message
    one(errors, "16-bit", str(tmp_path / "deep.png"))
    one(errors, "sem_seg_file_name", str(tmp_path / "nokey.png"))
    one(warnings, "grayscale", str(tmp_path / "gray.png"))
    assert len(errors) == 8 and len(warnings) == 1
    assert not any(str(tmp_path / "good.png") in p for p in problems)


def test_record_size_and_palette_labels(tmp_path: Path):
    label = Image.fromarray(np.zeros((24, 32), dtype=np.uint8), mode="L").convert("P")
    label.save(tmp_path / "palette_gt.png")
    wrong_size = _record(_image(tmp_path / "a.png"), _label(tmp_path / "a_gt.png"), (40, 30))
    records = [wrong_size, _record(_image(tmp_path / "b.png"), str(tmp_path / "palette_gt.png"))]
    problems = check_sem_seg_dataset(records, num_classes=3, progress=False, num_workers=0)
    assert len(problems) == 2 and all(is_error(p) for p in problems)
    assert "record says 40x30" in problems[0]
    assert "palette" in problems[1] and "palette_gt.png" in problems[1]


def _fake_voc(root: Path, train=("2007_000001", "2007_000002"), val=("2007_000003",)) -> Path:
    """A tiny VOC2012 tree with palette label PNGs, as VOC ships them."""
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = [c for rgb in voc_palette(256) for c in rgb]
    rng = np.random.default_rng(0)
    for k, image_id in enumerate(train + val):
        h, w = 20 + k, 30
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg")
        labels = np.resize(np.array(list(range(21)) + [255], dtype=np.uint8), h * w)
        label = Image.fromarray(labels.reshape(h, w)).convert("P")
        label.putpalette(palette)
        label.save(voc / "SegmentationClass" / f"{image_id}.png")
    for split, ids in (("train", train), ("val", val)):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_voc_registration(tmp_path: Path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image

    voc = _fake_voc(tmp_path)
    prefix = f"test_voc_{uuid.uuid4().hex}"
    names = register_pascal_voc_sem_seg(str(tmp_path), name_prefix=prefix)
    assert names == [f"{prefix}_train", f"{prefix}_val", f"{prefix}_train_aug"]
    try:
        # detectron2 would read palette labels as colour luminance: a clear error until
        # the labels are converted
        with pytest.raises(FileNotFoundError, match="prepare_voc"):
            DatasetCatalog.get(f"{prefix}_train")
        assert convert_voc_labels(str(voc), progress=False) == 3
        assert convert_voc_labels(str(voc), progress=False) == 0  # already done

        train = DatasetCatalog.get(f"{prefix}_train")
        val = DatasetCatalog.get(f"{prefix}_val")
        assert [Path(d["file_name"]).stem for d in train] == ["2007_000001", "2007_000002"]
        assert len(val) == 1 and (val[0]["height"], val[0]["width"]) == (22, 30)
        for d in train + val:
            assert set(d) == {"file_name", "sem_seg_file_name", "height", "width"}
            source = voc / "SegmentationClass" / Path(d["sem_seg_file_name"]).name
            expected = np.asarray(Image.open(source))
            # what detectron2's DatasetMapper sees
            seen = read_image(d["sem_seg_file_name"], "L").squeeze(2)
            assert np.array_equal(seen, expected)
            assert set(np.unique(seen).tolist()) == set(range(21)) | {255}
        assert check_sem_seg_dataset(train + val, num_classes=21, progress=False) == []

        meta = MetadataCatalog.get(f"{prefix}_val")
        assert meta.stuff_classes == list(VOC_CLASSES) and len(meta.stuff_classes) == 21
        assert [tuple(c) for c in meta.stuff_colors] == VOC_COLORS
        assert VOC_COLORS[1] == (128, 0, 0) and VOC_COLORS[15] == (192, 128, 128)
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        with pytest.raises(FileNotFoundError, match="SBD"):
            DatasetCatalog.get(f"{prefix}_train_aug")
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_voc_train_aug(tmp_path: Path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    voc = _fake_voc(tmp_path)
    aug = voc / "SegmentationClassAug"
    aug.mkdir()
    Image.fromarray(np.full((20, 30), 7, dtype=np.uint8)).save(aug / "2008_000009.png")
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(
        voc / "JPEGImages" / "2008_000009.jpg"
    )
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "2007_000001\n2008_000009\n"
    )
    convert_voc_labels(str(voc), progress=False)
    prefix = f"test_voc_aug_{uuid.uuid4().hex}"
    names = register_pascal_voc_sem_seg(str(tmp_path), name_prefix=prefix)
    try:
        dicts = DatasetCatalog.get(f"{prefix}_train_aug")
        assert [Path(d["file_name"]).stem for d in dicts] == ["2007_000001", "2008_000009"]
        assert np.all(np.asarray(Image.open(dicts[1]["sem_seg_file_name"])) == 7)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_voc_registered_at_import_without_data():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import dyn_seg.data  # noqa: F401

    for split in ("train", "val", "train_aug"):
        name = f"voc_2012_sem_seg_{split}"
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "sem_seg"


def test_check_dataset_cli(tmp_path: Path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dyn_seg.tools import check_dataset as cli

    good = _record(_image(tmp_path / "a.png"), _label(tmp_path / "a_gt.png"))
    bad = _record(_image(tmp_path / "b.png"), _label(tmp_path / "b_gt.png", values=(0, 9)))
    name = f"test_check_cli_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: [good, bad])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255)
    try:
        assert cli.main(["--dataset", name, "--no-progress"]) == 1
        out = capsys.readouterr().out
        assert "b_gt.png" in out and "9" in out and "1 error(s)" in out
        assert cli.main(["--dataset", name, "--num-classes", "10", "--no-progress"]) == 0
        assert cli.main(["--dataset", "no_such_dataset", "--no-progress"]) == 2
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
