"""The trained Tiny network ships with dyn_seg: offline, checked by sha256, and trained."""
from __future__ import annotations

import hashlib
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from detectron2.modeling import build_model

from dyn_seg import model_zoo
from dyn_seg.synthetic import render_scene

TINY = "Synthetic/Dynamic-Tiny.yaml"


def _no_network(*args, **kwargs):
    raise AssertionError("the shipped weights must load without the network")


def _pixel_accuracy(model, scenes) -> float:
    correct = total = 0
    with torch.no_grad():
        for image_rgb, train_ids in scenes:
            bgr = np.ascontiguousarray(image_rgb[:, :, ::-1].transpose(2, 0, 1))
            out = model([{"image": torch.as_tensor(bgr, dtype=torch.float32)}])[0]
            pred = out["sem_seg"].argmax(0).numpy()
            valid = train_ids != 255
            correct += int((pred[valid] == train_ids[valid]).sum())
            total += int(valid.sum())
    return correct / total


def _scenes(n: int = 3):
    lut = np.full(256, 255, np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 255:
            lut[label_id] = label.trainId
    rng = np.random.default_rng(2024)  # not the generator's training seeds
    return [(image, lut[ids]) for image, ids, _, _ in
            (render_scene(rng, 128, 256) for _ in range(n))]


def test_trained_tiny_loads_offline_and_segments(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", _no_network)
    entry = model_zoo.MODEL_ZOO_WEIGHTS[TINY]
    path = model_zoo.get_checkpoint_url(TINY)
    assert "://" not in path and path.endswith(entry["url"])
    data = open(path, "rb").read()
    assert len(data) == int(entry["bytes"]) < 4 * 1024 * 1024  # small enough to ship
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]

    trained = model_zoo.get(TINY, trained=True, device="cpu")
    cfg = model_zoo.get_config(TINY, trained=True)
    assert cfg.MODEL.WEIGHTS == path
    torch.manual_seed(0)
    untrained = build_model(model_zoo.get_config(TINY)).eval()
    scenes = _scenes()
    after, before = _pixel_accuracy(trained, scenes), _pixel_accuracy(untrained, scenes)
    assert after > 0.75 and after > before + 0.3, (before, after)


def test_changed_shipped_weights_are_refused(tmp_path, monkeypatch):
    changed = tmp_path / "Dynamic-Tiny.pth"
    shutil.copy(model_zoo.get_checkpoint_url(TINY), changed)
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))
    entry = dict(model_zoo.MODEL_ZOO_WEIGHTS[TINY], url=str(changed))
    monkeypatch.setitem(model_zoo.MODEL_ZOO_WEIGHTS, TINY, entry)
    with pytest.raises(ValueError, match="sha256 of .*Dynamic-Tiny.pth"):
        model_zoo.get(TINY, trained=True)
    with pytest.raises(ValueError, match="sha256"):
        model_zoo.get_config(TINY, trained=True)


def test_configs_without_shipped_weights_say_how_to_get_them():
    with pytest.raises(KeyError, match="convert_reference_checkpoint"):
        model_zoo.get_config("Cityscapes/Dynamic-L16-B.yaml", trained=True)
