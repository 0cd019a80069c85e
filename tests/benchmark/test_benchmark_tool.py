"""dyn_seg.tools.benchmark (tools/benchmark.py): JSON records for every mode, forced gate
patterns, FLOPs shares."""
from __future__ import annotations

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
    from dyn_seg.tools import benchmark

    return benchmark


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


# -- operator counts, modes of later versions, memory, profile -----------------------------

COUNT = ["--device", "cpu", "--task", "count", "--train-size", "64", "64", "--train-batch", "2",
         "--calibrate", "0"]


def _counts(capsys, size, modes, train_modes):
    _tool().main(COUNT + ["--size", *size, "--modes", *modes, "--train-modes", *train_modes]
                 + TINY)
    header, *records = _lines(capsys)
    return header, {(r["pass"], r["mode"]): r for r in records}


def test_count_task_reports_kernels_and_host_reads_per_forward(capsys):
    modes = ["faithful", "fast", "graph-dense", "graph-conditional"]
    header, counts = _counts(capsys, ["64", "128"], modes, ["faithful", "checkpoint"])
    assert header["layers"] == 4
    assert list(counts) == [("inference", m) for m in modes] + [("train", "faithful"),
                                                                 ("train", "checkpoint")]
    for r in counts.values():
        assert r["task"] == "count" and r["count_method"] == "dispatch" and r["kernels"] > 0
        assert r["top_ops"] and r["top_ops"][0][1] >= r["top_ops"][-1][1]
    # the fast plan reads each layer's gates back once (tolist); the faithful plan and the
    # dense graph plan decide on the device
    fast = counts[("inference", "fast")]
    assert fast["host_reads"] == 1 + 4 and fast["host_read_ops"] == [["tolist", 5]]
    assert counts[("inference", "faithful")]["host_reads"] == 0
    assert counts[("inference", "graph-dense")]["host_reads"] == 0
    # checkpointing recomputes every cell's forward in the backward pass
    train, ckpt = counts[("train", "faithful")], counts[("train", "checkpoint")]
    assert ckpt["kernels"] > train["kernels"]
    conv = dict(train["top_ops"])["convolution"]
    assert dict(ckpt["top_ops"])["convolution"] > conv
    # the counts do not depend on the input size
    _, larger = _counts(capsys, ["128", "256"], ["fast", "graph-dense"], ["faithful"])
    for key, r in larger.items():
        assert (r["kernels"], r["host_reads"]) == (counts[key]["kernels"],
                                                   counts[key]["host_reads"]), key


def test_profiler_counts_compiled_code_that_the_dispatch_counter_cannot_see():
    from dyn_seg.benchmark.counting import profile_count
    from dyn_seg.benchmark.op_counts import _inductor_kernel_profile

    weight = torch.randn(4, 4, 3, 3)

    def f(x):
        y = torch.nn.functional.conv2d(torch.relu(x) * 2 + 1, weight).sin()
        return y, y.sum().item()

    x = torch.randn(1, 4, 16, 16)
    compiled = torch.compile(f)
    with _inductor_kernel_profile():
        expected = compiled(x)  # compiles
    (out, value), record = profile_count(compiled, x)
    assert torch.allclose(out, expected[0]) and value == pytest.approx(expected[1], rel=1e-5)
    assert record.method == "profiler" and record.extra["compiled_regions"] >= 1
    generated = [k for k in record.ops if k.startswith("kernel:")]
    assert generated, dict(record.ops)  # inductor's fused kernels are counted
    assert record.count("convolution") == 1  # the external kernel
    assert record.host_reads == 1 and record.where == ["_local_scalar_dense"]  # .item()
    assert record.kernels >= 1 + len(generated)


def test_modes_of_later_versions_resolve_to_the_first_spelling_the_options_accept():
    from dataclasses import dataclass

    from dyn_seg.benchmark.modes import ModeSpec, UnavailableMode, _build, resolve

    @dataclass(frozen=True)
    class Options:  # options of a version that has the graph plans and a compile switch
        plan: str = "fast"
        compile_graph: bool = False

        def __post_init__(self):
            if self.plan not in ("fast", "graph-dense"):
                raise ValueError(f"plan {self.plan!r} unknown")

    spec = ModeSpec((dict(plan="graph-dense", fullgraph=True),
                     dict(plan="graph-dense", compile_graph=True)), "test")
    reasons = []
    assert _build(Options, spec, "m", reasons) == Options("graph-dense", True)
    assert reasons == ["Options has no fullgraph"]
    rejected = ModeSpec((dict(plan="graph-sparse"),), "test")
    assert _build(Options, rejected, "m", reasons) is None
    assert "plan 'graph-sparse' unknown" in reasons[-1]
    # on this version's options, and on a CPU
    with pytest.raises(UnavailableMode, match="needs a CUDA device"):
        resolve("inference", "graph-dense-cudagraph", "cpu")
    with pytest.raises(ValueError, match="Unknown inference mode 'fastest'"):
        resolve("inference", "fastest")


def test_unavailable_mode_stops_with_the_reason_unless_skipped(capsys):
    with pytest.raises(SystemExit):
        _tool().main(COMMON + ["--modes", "fast", "graph-dense-cudagraph"] + TINY)
    assert "needs a CUDA device" in capsys.readouterr().err
    _tool().main(COMMON + ["--modes", "fast", "graph-dense-cudagraph", "--skip-unavailable",
                           "--warmup", "0", "--iters", "1"] + TINY)
    header, *records = _lines(capsys)
    assert "needs a CUDA device" in header["unavailable_modes"]["inference:graph-dense-cudagraph"]
    assert [r["mode"] for r in records] == ["fast"]


@pytest.mark.parametrize("bad, message", [
    (["--iters", "0"], "argument --iters: 0 is not allowed: it must be an integer >= 1"),
    (["--batch", "0"], "argument --batch: 0 is not allowed: it must be an integer >= 1"),
    (["--warmup", "-1"], "argument --warmup: -1 is not allowed: it must be an integer >= 0"),
    (["--device", "tpu0"], "is not a torch device"),
    (["--gates", "half"], "paths:F or cells:F"),
])
def test_bad_arguments_name_the_flag_and_the_fix(capsys, bad, message):
    with pytest.raises(SystemExit):
        _tool().parse_args(["--device", "cpu"] + bad)
    assert message in capsys.readouterr().err


def test_cpu_peak_memory_counts_tensor_bytes_of_the_call():
    from dyn_seg.benchmark.harness import peak_memory

    def step():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB more while a lives
        del a
        return b.sum()

    mem = peak_memory(step, torch.device("cpu"))
    assert 8.0 <= mem["tensor_peak_mb"] < 9.0
    assert mem["process_peak_rss_mb"] > mem["tensor_peak_mb"]


def test_training_records_tensor_peak_memory_with_and_without_checkpointing(capsys):
    _tool().main(["--device", "cpu", "--task", "train", "--train-size", "64", "64",
                  "--train-batch", "2", "--warmup", "0", "--iters", "1",
                  "--train-modes", "faithful", "checkpoint"] + TINY)
    records = _lines(capsys)[1:]
    assert [r["mode"] for r in records] == ["faithful", "checkpoint"]
    for r in records:
        assert r["tensor_peak_mb"] > 0 and "profiler" in r["memory_method"]
    assert records[1].get("bridge") or records[1]["options"].get("checkpoint")


def test_profile_task_names_the_most_expensive_operators(capsys):
    _tool().main(["--device", "cpu", "--task", "profile", "--size", "64", "128", "--iters", "1",
                  "--modes", "fast", "--calibrate", "0"] + TINY)
    (record,) = _lines(capsys)[1:]
    assert record["task"] == "profile" and record["wall_ms_per_call"] > 0
    times = [k["ms_per_call"] for k in record["top_kernels"]]
    assert times and times == sorted(times, reverse=True)
    assert "device_busy_share" not in record  # no separate device on a CPU


def test_busy_share_is_the_union_of_intervals():
    from dyn_seg.benchmark.profiling import busy_share

    assert busy_share([(0, 2), (1, 3), (5, 6), (5.5, 5.8)], 10) == pytest.approx(0.4)
    assert busy_share([], 10) == 0.0


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
