"""The model analysis tool: analytic and fvcore FLOPs, parameter counts per part."""
from __future__ import annotations

import json

import pytest
from conftest import REPO, tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.tools import analyze_model


@pytest.fixture(scope="module")
def tool():
    return analyze_model


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(tiny_cfg().dump())
    return str(path)


def _run_json(tool, capsys, *args):
    tool.main(["--format", "json", *args])
    return json.loads(capsys.readouterr().out)


def test_json_report_has_analytic_fvcore_and_parameter_counts(tool, config_file, capsys):
    report = _run_json(tool, capsys, "--config-file", config_file, "--size", "60x120")
    assert report["input_size"] == [60, 120]
    assert report["counting_size"] == [64, 128]  # padded to MAX_STRIDE

    open_ = report["analytic_gflops"]["all_open"]
    parts = open_["expected"] + open_["gates"] + open_["stem"] + open_["head"]
    assert open_["real"] == pytest.approx(parts)
    assert open_["gates"] > 0
    forward = report["analytic_gflops"]["forward"]
    assert 0 < forward["expected"] <= open_["expected"] + 1e-9
    assert 0 < forward["real"] <= open_["real"] + 1e-9

    fv = report["fvcore_gflops"]
    assert fv["by_operator"]["conv"] > 0 and "upsample_bilinear2d" in fv["by_operator"]
    assert fv["total"] == pytest.approx(sum(fv["by_operator"].values()))
    assert fv["total"] == pytest.approx(fv["backbone"] + fv["head"])
    assert "aten::add" in fv["uncounted_operators"]

    params = report["parameters"]
    total = sum(p.numel() for p in build_model(tiny_cfg()).parameters())
    assert params["total"] == total
    summed = params["stem"] + params["init_cell"] + sum(params["layers"].values())
    assert summed + params["gates"] + params["head"] == total
    assert params["other"] == 0 and len(params["layers"]) == 4


def test_network_fix_has_dynamic_parameters_minus_gates(tool, config_file, capsys):
    dynamic = _run_json(tool, capsys, "--config-file", config_file, "--size", "64x64")
    fixed = _run_json(tool, capsys, "--config-file", config_file, "--size", "64x64",
                      "--opts", "MODEL.GATE.GATE_ON", "False")
    assert fixed["parameters"]["gates"] == 0
    assert fixed["parameters"]["total"] == dynamic["parameters"]["without_gates"]
    # without gates every path is open: the forward costs what the all-open count says
    analytic = fixed["analytic_gflops"]
    assert analytic["forward"]["real"] == pytest.approx(analytic["all_open"]["real"], rel=1e-6)
    assert analytic["forward"]["active_path_rate"] == 1.0


def test_table_format_lists_parts(tool, config_file, capsys):
    tool.main(["--config-file", config_file, "--size", "64x64"])
    text = capsys.readouterr().out
    for needle in ("analytic, all paths open", "fvcore, same forward", "gates",
                   "total without gates (Network-Fix)", "layer 3 cells"):
        assert needle in text


def test_bad_size_names_the_expected_form(tool, capsys):
    from dyn_seg.utils.cli import parse_tool_args

    with pytest.raises(SystemExit):
        parse_tool_args(tool.get_parser(), ["--size", "1024by2048"])
    assert "HxW" in capsys.readouterr().err
    for size in (["1024x2048"], ["1024", "2048"]):
        assert parse_tool_args(tool.get_parser(), ["--size", *size]).size == (1024, 2048)


def test_context_module_is_a_row_of_the_head(tool, tmp_path, capsys):
    """A PSP head: its context module is listed (table) and counted inside the head (json)."""
    cfg = tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NAME": "DynamicContextSemSegHead",
                      "MODEL.SEM_SEG_HEAD.CONTEXT.NAME": "PSP", "MODEL.FAST.ENABLED": False})
    path = tmp_path / "psp.yaml"
    path.write_text(cfg.dump())
    report = _run_json(tool, capsys, "--config-file", str(path), "--size", "128x128")
    open_ = report["analytic_gflops"]["all_open"]
    head = build_model(cfg).sem_seg_head
    assert open_["context"] == pytest.approx(head.context_flops((128, 128)) * 1e-3, rel=1e-9)
    assert 0 < open_["context"] < open_["head"]
    tool.main(["--config-file", str(path), "--size", "128x128"])
    assert "context module (in head)" in capsys.readouterr().out


def test_classifier_reports_its_pooling_and_linear_head(tool, capsys):
    """Classification configs are analysed with the classifier's head (pooling + linear)."""
    config = str(REPO / "configs" / "Synthetic" / "Classification-Tiny.yaml")
    report = _run_json(tool, capsys, "--config-file", config, "--size", "32x32")
    assert report["model"]["meta_architecture"] == "DynamicClassifier"
    open_ = report["analytic_gflops"]["all_open"]
    # four pooled features (8, 16, 32, 64 channels at strides 4..32 of 32 x 32) + 120 -> 10
    by_hand = (8 * 8 * 8 + 4 * 4 * 16 + 2 * 2 * 32 + 1 * 1 * 64 + 120 * 10) / 1e9
    assert open_["head"] == pytest.approx(by_hand, rel=1e-9)
    assert open_["real"] == pytest.approx(
        open_["expected"] + open_["gates"] + open_["stem"] + open_["head"])
    # Network-Fix: the forward opens every path, and the real FLOPs are the all-open count
    forward = report["analytic_gflops"]["forward"]
    assert forward["real"] == pytest.approx(open_["real"], rel=1e-6)
    assert report["fvcore_gflops"]["head"] > 0
    params = report["parameters"]
    assert params["head"] == 120 * 10 + 10 and params["other"] == 0 and params["gates"] == 0
    tool.main(["--config-file", config, "--size", "32x32"])
    assert "DynamicClassifier (GlobalPoolClassificationHead)" in capsys.readouterr().out


def test_models_that_are_not_routed_are_refused_clearly(tool):
    from torch import nn

    model = nn.Module()
    model.backbone = build_model(tiny_cfg()).backbone
    with pytest.raises(SystemExit, match="not a routed model.*DynamicClassifier"):
        tool.analysed_model(model)


@pytest.mark.parametrize("config", ["PanopticDeepLab-Tiny", "MaskRCNN-Tiny"])
def test_panoptic_and_instance_configs_are_analysed(tool, config, capsys):
    """Every routed meta-architecture: analytic parts at the counting size, fvcore's count
    of network + dense heads, parameters of network parts + heads."""
    report = _run_json(tool, capsys, "--config-file", str(REPO / "configs" / "Synthetic" /
                                                    f"{config}.yaml"),
                 "--size", "128x256", "MODEL.BACKBONE.LAYER_NUM", "3")
    open_ = report["analytic_gflops"]["all_open"]
    assert report["counting_size"] == [128, 256]
    assert open_["head"] > 0
    assert open_["real"] == pytest.approx(
        open_["expected"] + open_["gates"] + open_["stem"] + open_["head"])
    fv = report["fvcore_gflops"]
    # both counted by fvcore on the same heads; the tool's count adds the ReLUs
    assert open_["head"] < fv["head"] < 1.01 * open_["head"]
    assert fv["backbone"] > 0
    params = report["parameters"]
    summed = params["stem"] + params["init_cell"] + sum(params["layers"].values())
    assert summed + params["gates"] + params["head"] == params["total"]
    assert report["analytic_gflops"]["forward"]["real"] > open_["head"]
