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
    other = _model()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # differs from the saved weights until loaded
    extra = DynSegCheckpointer(other, allow_unsafe_pickle=True).load(str(path))
    assert extra["note"].text == "ok"  # the pickled object came back
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


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


# ------------------------------------------------------------ safe and complete inference
class _Payload:
    """Unpickling this creates the file ``path``: proof that code from the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_weights(tmp_path, **overrides):
    path = tmp_path / "tiny.pth"
    torch.save({"model": build_model(tiny_cfg(**overrides)).state_dict()}, path)
    return path


def test_predictor_refuses_payload_pickles_and_runs_nothing(tmp_path):
    from dyn_seg.engine import DynSegPredictor

    marker = tmp_path / "payload-ran"
    state = _model().state_dict()
    pkl = tmp_path / "weights.pkl"
    pkl.write_bytes(pickle.dumps({"model": dict(state), "x": _Payload(marker)}))
    pth = tmp_path / "weights.pth"
    torch.save({"model": state, "x": _Payload(marker)}, pth)
    for path in (pkl, pth):
        cfg = tiny_cfg()
        cfg.MODEL.WEIGHTS = str(path)
        with pytest.raises(CheckpointError, match="allow_unsafe_pickle"):
            DynSegPredictor(cfg)
        assert not marker.exists(), f"loading {path.name} ran the payload"
    pickle.loads(pkl.read_bytes())  # the payload is real: unpickling does run it
    assert marker.exists()


def test_predictor_loads_reference_named_weights(tmp_path):
    from reference_helpers import reference_state, to_reference

    from dyn_seg.engine import DynSegPredictor

    reference = reference_state(_model())
    path = tmp_path / "reference.pth"
    torch.save({"model": reference}, path)
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = str(path)
    predictor = DynSegPredictor(cfg)
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, reference[to_reference(key)]), key


def test_inference_refuses_partial_or_missing_weights(tmp_path, caplog):
    from dyn_seg.engine import DynSegPredictor

    weights = _tiny_weights(tmp_path)
    # another number of classes: only the head's classifier does not fit
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5})
    cfg.MODEL.WEIGHTS = str(weights)
    with pytest.raises(CheckpointError) as err:
        DynSegPredictor(cfg)
    message = str(err.value)
    assert "2 of the model's" in message and "(head 2)" in message
    assert "sem_seg_head.predictor.weight" in message and "--allow-partial-weights" in message
    assert message.splitlines()[-1] == str(weights)
    DynSegPredictor(cfg, allow_partial_weights=True)  # explicit: runs, with a warning
    assert "sem_seg_head.predictor.weight" in caplog.text

    # one more layer: backbone and gates of the new layer are missing
    cfg = tiny_cfg(**{"MODEL.BACKBONE.LAYER_NUM": 5})
    cfg.MODEL.WEIGHTS = str(weights)
    with pytest.raises(CheckpointError, match=r"\(backbone \d+, gates \d+\)"):
        DynSegPredictor(cfg)

    cfg = tiny_cfg()
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS is empty"):
        DynSegPredictor(cfg)
    DynSegPredictor(cfg, allow_partial_weights=True)


def test_training_warns_on_partial_weights_but_refuses_a_foreign_network(tmp_path, caplog):
    weights = _tiny_weights(tmp_path)
    model = build_model(tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5}))
    with caplog.at_level("WARNING"):
        DynSegCheckpointer(model).load(str(weights))  # fine-tuning to 5 classes
    assert "sem_seg_head.predictor.bias" in caplog.text
    wider = build_model(tiny_cfg(**{"MODEL.BACKBONE.INIT_CHANNEL": 16}))
    with pytest.raises(CheckpointError, match="less than 50%"):
        DynSegCheckpointer(wider).load(str(weights))


def test_eval_only_without_weights_is_an_error(tmp_path):
    from dyn_seg.tools import train_net

    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_cfg().dump())
    args = train_net.argument_parser().parse_args(
        ["--config-file", str(config), "--eval-only", "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS is empty"):
        train_net.main(args)
    assert train_net.argument_parser().parse_args(
        ["--eval-only", "--allow-partial-weights"]).allow_partial_weights


def test_demo_and_visualiser_refuse_partial_weights(tmp_path):
    from dyn_seg.tools import demo
    from dyn_seg.tools import visualize_routing as visualiser

    weights = _tiny_weights(tmp_path)
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5})
    cfg.MODEL.WEIGHTS = str(weights)
    with pytest.raises(CheckpointError, match=r"\(head 2\)"):
        demo.build_predictor(cfg)
    demo.build_predictor(cfg, allow_partial_weights=True)
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(CheckpointError, match=r"\(head 2\)"):
        visualiser.build_predictor(cfg, str(weights), 0)
    visualiser.build_predictor(cfg, str(weights), 0, allow_partial_weights=True)


def test_unreachable_url_gives_clear_error_and_leaves_no_lock(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    url = "http://127.0.0.1:9/x.pth"
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model()).load(url)
    assert "Cannot download the weights" in str(err.value)
    assert str(err.value).splitlines()[-1] == url
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not [p for p in cache.rglob("*") if p.is_file()], list(cache.rglob("*"))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_get_the_permissions_of_other_outputs(tmp_path, umask):
    from iopath.common.file_io import PathManager

    opened = []

    class RecordingPathManager(PathManager):
        def open(self, path, mode="r", **kwargs):
            opened.append(path)
            return super().open(path, mode, **kwargs)

    old = os.umask(umask)
    try:
        ckpt = DynSegCheckpointer(_model(), str(tmp_path))
        ckpt.path_manager = RecordingPathManager()
        ckpt.save("model_final")
        with open(tmp_path / "metrics.json", "w") as f:  # any other output
            f.write("{}")
    finally:
        os.umask(old)
    expected = (tmp_path / "metrics.json").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("model_final.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert len(opened) == 2  # saved through the checkpointer's path manager
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "metrics.json", "model_final.pth"]
