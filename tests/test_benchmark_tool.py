"""tools/benchmark.py: JSON records for every mode, forced gate patterns, FLOPs shares."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO, tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.benchmark.harness import all_open_real_gflops, parse_gates, prepare_weights

TINY = ["--opts", "MODEL.BACKBONE.LAYER_NUM", "4", "MODEL.BACKBONE.INIT_CHANNEL", "8",
        "MODEL.BACKBONE.STEM_WIDTH", "16"]
COMMON = ["--device", "cpu", "--size", "64", "128", "--warmup", "1", "--iters", "2"]


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" /
                                                  "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(capsys) -> list:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_inference_benchmark_prints_one_json_line_per_mode(capsys):
    modes = ["faithful", "fast-base", "fast", "fast-bf16"]
    _tool().main(COMMON + ["--batch", "2", "--gates", "paths:0.3", "--modes", *modes] + TINY)
    lines = _lines(capsys)
    header, records = lines[0], lines[1:]
    assert header["task"] == "setup" and header["device"] and header["device_type"] == "cpu"
    assert header["gates"] == "paths:0.3" and header["closed_paths"] > 0
    assert [r["mode"] for r in records] == modes
    for r in records:
        assert r["task"] == "inference" and r["batch"] == 2 and r["runs"] == 2
        assert r["median_ms"] > 0 and r["real_gflops"] > 0 and r["speedup_vs_faithful"] > 0
        assert 0.0 <= r["shut_real_flops_share"] < 1.0
    fp32 = [r for r in records if r["mode"] in ("faithful", "fast-base", "fast")]
    for r in fp32:
        assert r["max_abs_diff"] < 1e-3 and r["argmax_agreement"] == 1.0
        assert r["argmax_differing_pixels"] == 0
        assert r["real_gflops"] == pytest.approx(records[0]["real_gflops"], rel=1e-6)
    assert records[-1]["argmax_agreement"] > 0.9  # bf16


def test_argmax_disagreement_reports_the_margin_of_differing_pixels():
    from dyn_seg.benchmark.harness import _argmax_agreement

    reference = torch.zeros(1, 3, 2, 2)
    reference[0, 0] = 1.0  # class 0 everywhere, margin 1 ...
    reference[0, 1, 0, 0] = 0.99995  # ... except a near tie at (0, 0)
    logits = reference.clone()
    logits[0, 1, 0, 0] += 1e-4  # rounding flips the tie only
    out = _argmax_agreement(logits, reference)
    assert out["argmax_differing_pixels"] == 1 and out["argmax_agreement"] == 0.75
    assert out["argmax_differing_max_margin"] == pytest.approx(5e-5, abs=1e-6)
    assert _argmax_agreement(reference, reference)["argmax_differing_pixels"] == 0


def test_training_benchmark_reports_throughput_per_mode(capsys):
    _tool().main(["--device", "cpu", "--task", "train", "--train-size", "64", "64",
                  "--train-batch", "2", "--warmup", "0", "--iters", "1",
                  "--train-modes", "faithful", "channels_last"] + TINY)
    records = _lines(capsys)[1:]
    assert [r["mode"] for r in records] == ["faithful", "channels_last"]
    for r in records:
        assert r["task"] == "train" and r["images_per_s"] > 0 and r["size"] == [64, 64]


def test_open_gates_shut_no_real_flops_and_closed_cells_shut_some():
    model = build_model(tiny_cfg())
    from dyn_seg.benchmark.harness import benchmark_inference

    prepare_weights(model, "open", seed=0, calibrate=1, calibration_size=(32, 64))
    (record,) = benchmark_inference(model, ["faithful"], (64, 128), 1, 0, 1)
    assert record["real_gflops"] == pytest.approx(
        all_open_real_gflops(model, (64, 128)), rel=1e-5)
    prepare_weights(model, "cells:0.5", seed=0, calibrate=0, calibration_size=(32, 64))
    (record,) = benchmark_inference(model, ["faithful"], (64, 128), 1, 0, 1)
    assert record["shut_real_flops_share"] > 0.1


@pytest.mark.parametrize("spec", ["paths", "cells:1.5", "half:0.5", "paths:x"])
def test_bad_gate_spec_names_the_allowed_forms(spec):
    with pytest.raises(ValueError, match="paths:F or cells:F"):
        parse_gates(spec)


def test_unknown_mode_is_rejected():
    from dyn_seg.benchmark.harness import benchmark_inference

    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match="Unknown inference modes"):
        benchmark_inference(model, ["fastest"], (64, 64), 1, 0, 1)


@pytest.mark.parametrize("config", ["PanopticDeepLab-Tiny", "MaskRCNN-Tiny"])
def test_panoptic_and_instance_models_are_benchmarked_end_to_end(config, capsys):
    """Task models: latency of model(inputs) per mode, the routed network's share, the
    backbone FLOPs the closed gates shut; training is refused with the reason."""
    cfg = str(REPO / "configs" / "Synthetic" / f"{config}.yaml")
    opts = ["--opts", "MODEL.BACKBONE.LAYER_NUM", "3"]
    _tool().main(["--device", "cpu", "--size", "128", "256", "--warmup", "0", "--iters", "1",
                  "--config-file", cfg, "--gates", "cells:0.5", "--modes", "faithful",
                  "fast", *opts])
    header, faithful, fast = _lines(capsys)
    assert header["closed_paths"] > 0
    assert (faithful["execution_plan"], fast["execution_plan"][:5]) == ("faithful", "fast:")
    for r in (faithful, fast):
        assert 0 < r["network_median_ms"] < r["median_ms"]
        assert r["shut_backbone_flops_share"] > 0.1
    assert fast["backbone_gflops"] == pytest.approx(faithful["backbone_gflops"], rel=1e-6)
    with pytest.raises(ValueError, match="semantic segmentors only"):
        _tool().main(["--device", "cpu", "--task", "train", "--config-file", cfg, *opts])
