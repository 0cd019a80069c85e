"""Conversion of every reference checkpoint kind: Dynamic, Network-Fix (with its constant
``gate_weights_beta`` buffers), ``conv_3x3_basic`` operations and ImageNet-pretrained Fix
backbones (``module.`` prefixes, a classification head), by the converter tool and on load.

The reference checkpoints are synthetic: our own models' state dicts renamed to the
reference's names (the inverse of ``REFERENCE_KEY_MAP``, checked to round-trip)."""
from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model
from reference_helpers import reference_state, to_reference

from dyn_seg.checkpoint import (
    CheckpointError,
    DynSegCheckpointer,
    convert_reference_state_dict,
    map_reference_key,
    parameter_part,
)

BASIC_CELL_TYPE = ["sep_conv_3x3", "skip_connect", "conv_3x3_basic"]


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides))


def _cell_prefixes(model):
    """Reference prefixes of every cell with its number of gate paths (from a gated model)."""
    prefixes = {}
    for key, value in model.state_dict().items():
        if key.endswith(".gate.proj.weight"):
            prefixes[to_reference(key[: -len(".gate.proj.weight")] + ".x")[:-2]] = value.shape[0]
    return prefixes


def fix_reference_state(fix_model, gated_model, **kwargs):
    """A Network-Fix checkpoint: no gates, a ``gate_weights_beta`` buffer of ones per cell."""
    state = reference_state(fix_model, **kwargs)
    for prefix, gate_num in _cell_prefixes(gated_model).items():
        state[f"{prefix}.gate_weights_beta"] = torch.ones(1, gate_num, 1, 1)
    return state


def _assert_loaded(model, reference, basic_ops=()):
    for key, value in model.state_dict().items():
        ref = to_reference(key, basic_ops)
        if ref in reference:
            assert torch.equal(value, reference[ref]), key


def test_fix_checkpoint_drops_constant_gate_buffers(tmp_path):
    fix, gated = _model(**{"MODEL.GATE.GATE_ON": False}), _model()
    reference = fix_reference_state(fix, gated)
    n_cells = len(_cell_prefixes(gated))
    assert n_cells == 1 + 2 + 3 + 4 + 4  # the init cell and the cells of 4 layers

    converted, report = convert_reference_state_dict(reference, fix.state_dict())
    assert report.ok, report.summary()
    assert len(report.dropped) == n_cells
    assert all(k.endswith(".gate_weights_beta") for k in report.dropped)
    assert set(converted) == set(fix.state_dict())

    target = _model(seed=1, **{"MODEL.GATE.GATE_ON": False})
    path = tmp_path / "fix.pth"
    torch.save({"model": reference}, path)
    DynSegCheckpointer(target, inference=True).load(str(path))  # complete: no error
    _assert_loaded(target, reference)


def test_conv_3x3_basic_operation_maps():
    overrides = {"MODEL.BACKBONE.CELL_TYPE": BASIC_CELL_TYPE}
    model = _model(**overrides)
    reference = reference_state(model, basic_ops=(2,))
    basic = [k for k in reference if re.search(r"\._ops\.2\.op\.(weight|norm\.weight)$", k)]
    assert basic, "the synthetic checkpoint has no conv_3x3_basic keys"

    converted, report = convert_reference_state_dict(reference, model.state_dict())
    assert report.ok, report.summary()
    target = _model(seed=1, **overrides)
    target.load_state_dict(converted)
    _assert_loaded(target, reference, basic_ops=(2,))


def _imagenet_fix_backbone(fix, gated):
    """An ImageNet-pretrained Fix network: backbone only, ``module.`` prefixes, a classifier."""
    state = fix_reference_state(fix, gated, parts=("backbone",))
    state = {f"module.{k}": v for k, v in state.items()}
    state["module.classifier.weight"] = torch.randn(1000, 64)
    state["module.classifier.bias"] = torch.zeros(1000)
    return state


def test_imagenet_fix_backbone_initialises_dynamic_network():
    fix, gated = _model(**{"MODEL.GATE.GATE_ON": False}), _model()
    reference = _imagenet_fix_backbone(fix, gated)
    target = gated.state_dict()

    _, full = convert_reference_state_dict(reference, target)
    assert not full.ok  # without the flag: the gates and the decoder are missing

    converted, report = convert_reference_state_dict(reference, target, backbone_only=True)
    assert report.ok, report.summary()
    assert sorted(report.not_segmentation) == ["module.classifier.bias",
                                               "module.classifier.weight"]
    assert set(report.fresh) == {k for k in target if parameter_part(k) in ("gates", "head")}
    assert set(converted) == {k for k in target if parameter_part(k) == "backbone"}
    summary = report.summary()
    assert "not part of a segmentation model" in summary and "initialised fresh" in summary


def _converter():
    from dyn_seg.tools import convert_reference_checkpoint

    return convert_reference_checkpoint


def test_converter_tool_writes_backbone_and_lists_fresh_parameters(tmp_path, capsys):
    fix, gated = _model(**{"MODEL.GATE.GATE_ON": False}), _model()
    src = tmp_path / "layer_fix_imagenet.pth"
    torch.save({"state_dict": _imagenet_fix_backbone(fix, gated)}, src)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_cfg().dump())
    out = tmp_path / "init.pth"
    tool = _converter()

    assert tool.main([str(src), str(out), "--config-file", str(config)]) == 1
    assert not out.exists()
    capsys.readouterr()

    assert tool.main([str(src), str(out), "--config-file", str(config),
                      "--init-dynamic-from-fix"]) == 0
    printed = capsys.readouterr().out
    assert "not part of a segmentation model" in printed and "module.classifier.weight" in printed
    assert "initialised fresh" in printed
    fresh = [k for k in gated.state_dict() if parameter_part(k) in ("gates", "head")]
    assert all(f"  {k}\n" in printed for k in fresh)
    written = torch.load(out, weights_only=True)["model"]
    assert set(written) == {k for k in gated.state_dict() if parameter_part(k) == "backbone"}

    # training from it: gates and decoder listed as a warning; evaluating with it: an error
    model = _model(seed=2)
    DynSegCheckpointer(model).load(str(out))
    _assert_loaded(model, {to_reference(k): v for k, v in written.items()})
    with pytest.raises(CheckpointError, match=r"gates \d+, head \d+"):
        DynSegCheckpointer(_model(seed=2), inference=True).load(str(out))


def test_reference_checkpoint_never_leaves_backbone_layers_random(tmp_path, caplog):
    gated = _model()
    reference = reference_state(gated)
    extra = "backbone.all_cell_list.7.0.cell_ops._ops.0.op.0.weight"  # a layer we lack
    path = tmp_path / "bigger.pth"
    torch.save({"model": {**reference, extra: torch.zeros(8, 1, 3, 3)}}, path)
    with pytest.raises(CheckpointError) as err:
        DynSegCheckpointer(_model(seed=1)).load(str(path))  # even for training
    assert extra in str(err.value) and str(err.value).splitlines()[-1] == str(path)

    lacking = "backbone.all_cell_list.2.1.cell_ops._ops.0.op.1.weight"
    assert lacking in reference
    path = tmp_path / "smaller.pth"
    torch.save({"model": {k: v for k, v in reference.items() if k != lacking}}, path)
    with pytest.raises(CheckpointError, match=re.escape(map_reference_key(lacking))):
        DynSegCheckpointer(_model(seed=1)).load(str(path))

    # a Fix backbone for a Dynamic network: gates and decoder missing is a listed warning
    fix = _model(**{"MODEL.GATE.GATE_ON": False})
    path = tmp_path / "fix_backbone.pth"
    torch.save({"model": fix_reference_state(fix, gated, parts=("backbone",))}, path)
    model = _model(seed=1)
    with caplog.at_level(logging.WARNING):
        DynSegCheckpointer(model).load(str(path))
    assert "gates" in caplog.text and "head" in caplog.text
    assert "backbone.cells.0.0.gate.proj.weight" in caplog.text
