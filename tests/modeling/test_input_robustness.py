"""Any image size works; wrong channel counts and bad dataset files fail with clear errors."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dyn_seg.data.robust_mapper import (
    DatasetFileError,
    DynSegDatasetMapper,
    read_image_file,
    read_label_file,
)

NUM_CLASSES = 19
ODD_SIZES = [(1, 1), (1, 2), (2, 1), (3, 5), (31, 33), (333, 517), (1500, 37), (37, 300)]


@pytest.fixture(scope="module")
def small_gate_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg(**{"MODEL.GATE.SMALL_GATE": True})).eval()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{h}x{w}" for h, w in ODD_SIZES])
def test_any_image_size_gives_sem_seg_of_that_size(small_gate_model, size):
    h, w = size
    with torch.no_grad():
        out = small_gate_model([{"image": _image(h, w)}])[0]
    assert out["sem_seg"].shape == (NUM_CLASSES, h, w)
    assert torch.isfinite(out["sem_seg"]).all()
    assert out["flops"]["real"] > 0


@settings(max_examples=8, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80))
def test_random_small_sizes_keep_their_size(small_gate_model, h, w):
    with torch.no_grad():
        out = small_gate_model([{"image": _image(h, w)}])[0]
    assert out["sem_seg"].shape == (NUM_CLASSES, h, w)


def test_mixed_sizes_in_one_batch_keep_each_size(small_gate_model):
    sizes = [(1, 1), (45, 7), (64, 96)]
    with torch.no_grad():
        outs = small_gate_model([{"image": _image(h, w, i)} for i, (h, w) in enumerate(sizes)])
    assert [tuple(o["sem_seg"].shape[1:]) for o in outs] == sizes


def test_requested_output_size_is_honoured(small_gate_model):
    with torch.no_grad():
        out = small_gate_model([{"image": _image(5, 9), "height": 20, "width": 36}])[0]
    assert out["sem_seg"].shape == (NUM_CLASSES, 20, 36)


def test_training_step_on_one_pixel_images_has_finite_loss():
    # two images: a 1x1 map at stride 32 gives batch norm one value per image
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.GATE.SMALL_GATE": True})).train()
    target = torch.zeros(1, 1, dtype=torch.long)
    losses = model([{"image": _image(1, 1, i), "sem_seg": target} for i in range(2)])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)


@pytest.mark.parametrize("min_size", [0, 64], ids=["no-resize", "resize"])
@pytest.mark.parametrize("size", [(1, 1), (333, 517), (1500, 37)], ids=str)
def test_default_predictor_returns_input_size(size, min_size):
    cfg = tiny_cfg(**{"MODEL.GATE.SMALL_GATE": True})
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = 128
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg)
    h, w = size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = predictor(image)
    assert out["sem_seg"].shape == (NUM_CLASSES, h, w)


@pytest.mark.parametrize("shape", [(1, 8, 8), (4, 8, 8), (8, 8), (1, 3, 8, 8)], ids=str)
def test_wrong_channel_count_names_the_shape(small_gate_model, shape):
    image = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"\(3, H, W\).*" + str(tuple(shape)).replace("(", r"\(")
                       .replace(")", r"\)")):
        small_gate_model([{"image": image, "file_name": "frame.png"}])


@pytest.mark.parametrize("channels", [1, 4])
def test_default_predictor_rejects_other_channel_counts(channels):
    predictor = DefaultPredictor(tiny_cfg())
    with pytest.raises(ValueError, match="3 channels"):
        predictor(np.zeros((16, 16, channels), dtype=np.uint8))


# ------------------------------------------------------------------ dataset files


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def _rgb(h=16, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(h=16, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)


def test_grayscale_image_is_read_as_three_equal_channels(tmp_path):
    gray = _rgb()[..., 0]
    image = read_image_file(_save(tmp_path / "gray.png", gray), "BGR")
    assert image.shape == (16, 24, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


def test_rgba_and_palette_images_are_read_as_three_channels(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((16, 24, 1), 7, np.uint8)], axis=2)
    rgba_file = _save(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image_file(rgba_file, "RGB"), rgba[..., :3])
    palette_file = str(tmp_path / "palette.png")
    Image.fromarray(_rgb()).convert("P").save(palette_file)
    assert read_image_file(palette_file, "BGR").shape == (16, 24, 3)


def _write_rgb48_png(path, rgb16: np.ndarray) -> str:
    """A PNG with 16 bits per RGB channel (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    rows = rgb16.astype(">u2")
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


def test_16_bit_rgb_image_is_read_as_its_high_byte(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (8, 12, 3)).astype(np.uint16)
    image = read_image_file(_write_rgb48_png(tmp_path / "rgb48.png", rgb16), "RGB")
    np.testing.assert_array_equal(image, (rgb16 >> 8).astype(np.uint8))


def test_16_bit_image_is_rejected_naming_the_file(tmp_path):
    path = _save(tmp_path / "deep image.png", (np.arange(384).reshape(16, 24) * 150)
                 .astype(np.uint16))
    with pytest.raises(DatasetFileError, match="16-bit") as err:
        read_image_file(path)
    assert path in str(err.value)
    assert err.value.file_name == path


def test_16_bit_label_map_keeps_its_values(tmp_path):
    labels = _labels().astype(np.uint16)
    labels[0, :3] = 255
    out = read_label_file(_save(tmp_path / "l16.png", labels), NUM_CLASSES, 255)
    np.testing.assert_array_equal(out, labels)
    assert out.dtype == np.uint8


def test_16_bit_label_value_above_255_is_not_clipped_to_ignore(tmp_path):
    labels = _labels().astype(np.uint16)
    labels[3, 4] = 300  # detectron2's reader would silently turn it into 255 (ignore)
    path = _save(tmp_path / "l16.png", labels)
    with pytest.raises(DatasetFileError, match="values 300,") as err:
        read_label_file(path, NUM_CLASSES, 255)
    assert path in str(err.value)


def test_label_values_outside_classes_and_ignore_are_named(tmp_path):
    labels = _labels()
    labels[0, 0], labels[1, 1], labels[2, 2] = 19, 200, 255
    path = _save(tmp_path / "bad labels.png", labels)
    with pytest.raises(DatasetFileError) as err:
        read_label_file(path, NUM_CLASSES, 255)
    message = str(err.value)
    assert path in message and "19, 200" in message and "255" in message
    assert "0..18" in message


@pytest.mark.parametrize("mode", ["P", "RGB"])
def test_palette_or_colour_label_files_are_rejected(tmp_path, mode):
    labels = _labels()
    path = str(tmp_path / f"label_{mode}.png")
    image = Image.fromarray(labels, mode="L")
    image = image.convert("P") if mode == "P" else Image.fromarray(np.stack([labels] * 3, 2))
    image.save(path)
    with pytest.raises(DatasetFileError, match="palette" if mode == "P" else "channels") as err:
        read_label_file(path, NUM_CLASSES, 255)
    assert path in str(err.value)


def test_truncated_and_non_image_files_are_named(tmp_path):
    good = _save(tmp_path / "good.png", _rgb(64, 64))
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(DatasetFileError, match="cannot decode") as err:
            read_image_file(str(path))
        assert str(path) in str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DatasetFileError, match="Image file not found") as err:
        read_image_file(str(tmp_path / "nope.png"))
    assert str(tmp_path / "nope.png") in str(err.value)
    with pytest.raises(DatasetFileError, match="Label file not found"):
        read_label_file(str(tmp_path / "nope_label.png"), NUM_CLASSES, 255)


def _mapper(is_train=True):
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)
    cfg.INPUT.MIN_SIZE_TEST = 16
    return DynSegDatasetMapper(cfg, is_train)


def _record(tmp_path, image, labels, name="x"):
    return {
        "file_name": _save(tmp_path / f"{name}.png", image),
        "sem_seg_file_name": _save(tmp_path / f"{name}_label.png", labels),
    }


def test_mapper_reads_a_good_record_like_detectron2(tmp_path):
    from detectron2.data import DatasetMapper

    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)
    cfg.INPUT.RANDOM_FLIP = "none"
    record = _record(tmp_path, _rgb(), _labels())
    ours = DynSegDatasetMapper(cfg, True)(dict(record))
    theirs = DatasetMapper(cfg, True)(dict(record))
    assert torch.equal(ours["image"], theirs["image"])
    assert torch.equal(ours["sem_seg"], theirs["sem_seg"])
    assert ours["sem_seg"].dtype == torch.long


def test_mapper_keeps_label_values_above_255_through_resizing(tmp_path):
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 300, "INPUT.MIN_SIZE_TRAIN": (32,),
                      "INPUT.RANDOM_FLIP": "none"})
    labels = np.full((16, 24), 299, dtype=np.uint16)
    labels[:, :12] = 7
    record = _record(tmp_path, _rgb(), labels)
    out = DynSegDatasetMapper(cfg, True)(record)
    assert out["sem_seg"].shape == (32, 48)
    assert set(out["sem_seg"].unique().tolist()) == {7, 299}


def test_mapper_size_mismatch_names_both_files(tmp_path):
    record = _record(tmp_path, _rgb(16, 24), _labels(16, 20))
    with pytest.raises(DatasetFileError, match="size mismatch") as err:
        _mapper()(record)
    message = str(err.value)
    assert record["file_name"] in message and record["sem_seg_file_name"] in message
    assert "24x16" in message and "20x16" in message


def test_mapper_record_size_mismatch_names_the_image(tmp_path):
    record = {**_record(tmp_path, _rgb(16, 24), _labels(16, 24)), "height": 20, "width": 24}
    with pytest.raises(ValueError, match="Mismatched image shape") as err:
        _mapper()(record)
    assert record["file_name"] in str(err.value)


def test_mapper_checks_labels_at_inference_too(tmp_path):
    labels = _labels()
    labels[0, 0] = 77
    record = _record(tmp_path, _rgb(), labels)
    with pytest.raises(DatasetFileError, match="77"):
        _mapper(is_train=False)(record)


def test_bad_label_in_a_worker_process_reaches_the_main_process_named(tmp_path):
    good = [_record(tmp_path, _rgb(seed=i), _labels(seed=i), f"good{i}") for i in range(3)]
    labels = _labels()
    labels[5, 5] = 42
    bad = _record(tmp_path, _rgb(), labels, "bad")
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)
    loader = build_detection_train_loader(
        good + [bad], mapper=DynSegDatasetMapper(cfg, True), total_batch_size=4, num_workers=1
    )
    with pytest.raises(ValueError) as err:
        next(iter(loader))
    assert bad["sem_seg_file_name"] in str(err.value) and "42" in str(err.value)


def test_trainer_loaders_name_a_bad_label_file(tmp_path):
    from detectron2.data import DatasetCatalog

    from dyn_seg.engine import Trainer

    labels = _labels()
    labels[2, 3] = 99
    records = [_record(tmp_path, _rgb(), labels, "frame")]
    name = f"bad_labels_{tmp_path.name}"
    DatasetCatalog.register(name, lambda: records)
    try:
        cfg = tiny_cfg(**{"DATASETS.TRAIN": (name,), "SOLVER.IMS_PER_BATCH": 1,
                          "DATALOADER.NUM_WORKERS": 0, "INPUT.MIN_SIZE_TRAIN": (16,)})
        for loader in (Trainer.build_train_loader(cfg), Trainer.build_test_loader(cfg, name)):
            with pytest.raises(DatasetFileError, match="99") as err:
                next(iter(loader))
            assert records[0]["sem_seg_file_name"] in str(err.value)
    finally:
        DatasetCatalog.remove(name)
