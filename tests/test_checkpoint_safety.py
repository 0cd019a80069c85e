"""Safe loading and atomic saving of checkpoints."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.checkpoint import CheckpointError, DynSegCheckpointer


def _model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_save_writes_complete_file_and_pointer(tmp_path):
    model = _model()
    ckpt = DynSegCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    fresh = _model()
    out = DynSegCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert out["iteration"] == 9
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    ckpt = DynSegCheckpointer(model, str(tmp_path))
    ckpt.save("model_a")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_b")
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_a.pth"]


def test_truncated_weights_name_the_file(tmp_path):
    model = _model()
    path = tmp_path / "weights with space.pth"
    torch.save({"model": model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model()).load(str(path))
    assert str(err.value).splitlines()[-1] == str(path)


def test_foreign_weights_name_the_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model()).load(str(path))
    assert "another model" in str(err.value)
    assert str(err.value).splitlines()[-1] == str(path)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model()).load(str(tmp_path / "nope.pth"))
    assert str(err.value).splitlines()[-1].endswith("nope.pth")


def test_code_executing_pickle_refused_without_opt_in(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model()).load(str(path))
    assert "allow_unsafe_pickle" in str(err.value)

    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}, "payload": _Evil()}))
    with pytest.raises(CheckpointError, match="arbitrary code"):
        DynSegCheckpointer(_model()).load(str(pkl))


def test_opt_in_loads_trusted_pickle(tmp_path):
    model = _model()
    path = tmp_path / "trusted.pth"
    torch.save({"model": model.state_dict(), "note": _Note("ok")}, path)
    DynSegCheckpointer(_model(), allow_unsafe_pickle=True).load(str(path))


class _Note:
    def __init__(self, text):
        self.text = text


def test_reference_names_convert_on_load(tmp_path):
    model = _model()
    ours = model.state_dict()
    reference = {}
    for k, v in ours.items():
        k = k.replace("backbone.init_cell.", "backbone.init_layer.")
        k = k.replace("backbone.cells.", "backbone.all_cell_list.")
        k = k.replace(".gate.reduce.", ".gate_conv_beta.0.")
        k = k.replace(".gate.proj.", ".gate_conv_beta.2.")
        k = k.replace(".up.", ".res_up.1.").replace(".down.", ".res_down.1.")
        k = k.replace("sem_seg_head.decoders.", "sem_seg_head.layer_decoder_list.")
        if ".ops." in k:
            a, b = k.split(".ops.")
            op, rest = b.split(".layers.")
            k = f"{a}.cell_ops._ops.{op}.op.{rest}"
        reference[k] = v.clone() + 1 if v.is_floating_point() else v.clone()
    path = tmp_path / "reference.pth"
    torch.save({"model": reference}, path)
    fresh = _model()
    DynSegCheckpointer(fresh).load(str(path))
    for k, v in fresh.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, ours[k] + 1), k
