"""tools/gpu_report.py and scripts/gpu_check.sh: the GPU check's parts become one JSON file,
a table and verdicts on the targets of issue 19."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def _part(out, name, status, records):
    (out / "parts" / f"{name}.status").write_text(status)
    (out / "parts" / f"{name}.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\nnot json\n")


def _inference(mode, ms, real, all_open=117.0, differ=0, margin=0.0):
    return {"task": "inference", "mode": mode, "size": [1024, 2048], "batch": 1,
            "median_ms": ms, "images_per_s": 1e3 / ms, "real_gflops": real,
            "all_open_real_gflops": all_open, "shut_real_flops_share": 1 - real / all_open,
            "argmax_agreement": 1.0, "argmax_differing_pixels": differ,
            "argmax_differing_max_margin": margin, "peak_memory_mb": 2048.0}


def _train(mode, images_per_s, peak_gb):
    return {"task": "train", "mode": mode, "size": [768, 768], "batch": 8,
            "median_ms": 8e3 / images_per_s, "images_per_s": images_per_s,
            "peak_memory_mb": peak_gb * 1024}


def _report(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_report.py"),
                             str(tmp_path), "--elapsed", "400"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "gpu_check.json").read_text())


def test_report_collects_parts_and_judges_targets(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "env.json").write_text(json.dumps(
        {"torch": "2.11", "cuda": "13.0", "device": "NVIDIA H200", "python": "3.12",
         "conditional_nodes": {"CUDAGraph.begin_capture_to_if_node": False}}))
    setup = {"task": "setup", "gates": "open",
             "unavailable_modes": {"inference:graph-dense-compile": "no compile_graph"}}
    # L16: eager fast 12 ms; the conditional graph plan in one CUDA graph 4.5 ms with TF32
    # flips (0.02 margins); without TF32 only float32 ties (margin 1e-6) differ
    _part(tmp_path, "infer_L16_b1_open", "ok (20s)",
          [setup, _inference("faithful", 80.0, 117.0),
           _inference("fast", 12.0, 117.0, differ=8000, margin=0.02),
           _inference("graph-conditional-cudagraph", 4.5, 117.0, differ=8000, margin=0.02),
           _inference("graph-dense-bf16", 2.0, 117.0, differ=90000, margin=0.3)])
    _part(tmp_path, "infer_L16_b1_open_notf32", "ok (20s)",
          [setup, _inference("fast", 14.0, 117.0, differ=6, margin=1e-6),
           _inference("graph-conditional-cudagraph", 5.5, 117.0, differ=6, margin=1e-6)])
    _part(tmp_path, "infer_L16_b1_cells0.5", "ok (20s)",
          [dict(setup, gates="cells:0.5"), _inference("fast", 8.0, 63.0),
           _inference("graph-conditional-cudagraph", 4.0, 63.0)])
    # L33: 9 ms compiled, argmax checked on the eager variant of that plan, which differs
    # by clear margins
    _part(tmp_path, "infer_L33_b1_compile", "ok (90s)",
          [setup, _inference("graph-dense-compile", 9.0, 240.0, 240.0)])
    _part(tmp_path, "infer_L33_b1_open_notf32", "ok (30s)",
          [setup, _inference("graph-dense", 30.0, 240.0, 240.0, differ=3, margin=0.5)])
    _part(tmp_path, "train_L16", "ok (80s)",
          [setup, _train("faithful", 30.0, 28.0), _train("bf16-checkpoint", 60.0, 9.0)])
    _part(tmp_path, "train_L16_compile", "ok (140s)", [setup, _train("bf16-compile-graph",
                                                                     120.0, 13.0)])
    _part(tmp_path, "count_L16", "ok (20s)",
          [setup, {"task": "count", "pass": "inference", "mode": "graph-dense", "kernels": 510,
                   "host_reads": 0, "count_method": "dispatch", "cuda_kernel_launches": 498,
                   "cuda_syncs": 0}])
    _part(tmp_path, "profile_L16_b1", "ok (30s)",
          [setup, {"task": "profile", "mode": "fast", "wall_ms_per_call": 12.0,
                   "device_ms_per_call": 3.0, "device_busy_share": 0.25,
                   "top_kernels": [{"name": "sm90_conv", "ms_per_call": 1.5,
                                    "calls_per_call": 40}]}])
    _part(tmp_path, "infer_L33_b1_open", "timed out after 60s", [])
    report = _report(tmp_path)
    assert report["env"]["device"] == "NVIDIA H200"
    assert report["parts"]["infer_L33_b1_open"]["status"] == "timed out after 60s"
    rows = {row["target"].split(":")[0].split(",")[0]: row for row in report["targets"]}
    verdicts = [row["verdict"] for row in report["targets"]]
    # L16 met: 4.5 ms (the bf16 2 ms do not count: float32 only), argmax equal up to ties
    # with TF32 off. L33 missed: 3 pixels differ by clear margins. Training missed: the
    # fastest mode within 12 GB gives 60 img/s (120 img/s needs 13 GB). Shut latency of
    # L16: fast 8/12 = 0.67 <= 0.3 + 0.7 * 63/117 = 0.68 met, the CUDA graph 4/4.5 = 0.89
    # missed; L33 has no cells:0.5 part
    assert verdicts == ["met", "missed", "missed", "met", "missed", "not measured"]
    assert "4.50 ms (graph-conditional-cudagraph, infer_L16_b1_open); argmax of " \
           "graph-conditional-cudagraph: 6 pixels differ (TF32 off" in (
               report["targets"][0]["measured"])
    assert "argmax of graph-dense: 3 pixels differ (TF32 off" in report["targets"][1]["measured"]
    assert rows["L16 train 768x768 batch 8 >= 100 img/s at <= 12 GB"]["measured"].startswith(
        "60.0 img/s at 9.0 GB (bf16-checkpoint")
    table = (tmp_path / "gpu_check.md").read_text()
    assert "NVIDIA H200" in table and "timed out after 60s" in table
    assert "`CUDAGraph.begin_capture_to_if_node` no" in table
    assert ("| infer_L16_b1_cells0.5 | inference | fast | 1024x2048 | 1 | cells:0.5 | 8.00 |"
            in table)
    assert "| count_L16 | inference | graph-dense | 510 | 0 | dispatch | 498 |  | 0 |" in table
    assert "| profile_L16_b1 | fast | 12.00 | 3.00 | 25% | sm90_conv 1.50 |" in table
    assert "`inference:graph-dense-compile`: no compile_graph" in table


def test_fast_enough_without_a_tf32_off_check_is_not_judged(tmp_path):
    (tmp_path / "parts").mkdir()
    _part(tmp_path, "infer_L16_b1_open", "ok (20s)",
          [{"task": "setup"}, _inference("graph-dense-cudagraph", 4.0, 117.0)])
    report = _report(tmp_path)
    assert report["targets"][0]["verdict"] == "not measured"
    assert "(TF32 on" in report["targets"][0]["measured"]


def test_report_needs_the_check_folder(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_report.py"),
                             str(tmp_path / "missing")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_gpu_check_smoke_run_writes_the_report(tmp_path):
    """The check script itself, at toy sizes on this machine: environment probe, counts,
    inference modes side by side, the report (two parts, to stay short)."""
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_SMOKE="1", GPU_CHECK_ONLY="count_L16 infer_L16_b1_open",
               PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report["parts"]) == {"count_L16", "infer_L16_b1_open"}
    assert all(p["status"].startswith("ok") for p in report["parts"].values()), report["parts"]
    cond = report["env"]["conditional_nodes"]
    assert set(cond) == {"CUDAGraph.begin_capture_to_if_node",
                         "torch._higher_order_ops.cudagraph_conditional_nodes"}
    counts = [r for r in report["parts"]["count_L16"]["records"] if r.get("task") == "count"]
    assert {r["pass"] for r in counts} == {"inference", "train"}
    modes = [r["mode"] for r in report["parts"]["infer_L16_b1_open"]["records"]
             if r.get("task") == "inference"]
    assert modes[:3] == ["faithful", "fast", "fast-bf16"]
    assert (out / "gpu_check.md").is_file() and (out / "parts.tgz").is_file()
