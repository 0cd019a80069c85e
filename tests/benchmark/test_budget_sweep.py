"""tools/budget_sweep.py: a tiny two-point sweep writes its table and figure, and running it
again skips finished points instead of training them again."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyn_seg.data import generate_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "Synthetic" / "Budget-Sweep.yaml")

# a few iterations of a small network on 32x64 frames
TINY = [
    "MODEL.BACKBONE.LAYER_NUM", "4", "MODEL.BACKBONE.INIT_CHANNEL", "8",
    "MODEL.BACKBONE.STEM_WIDTH", "8", "MODEL.BUDGET.FLOPS_ALL", "1.0",
    "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.CROP.SIZE", "(32, 64)", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
]


def _load_tool():
    """The sweep's module (tools/budget_sweep.py runs its ``main``)."""
    from dyn_seg.benchmark import budget_sweep

    return budget_sweep


def _sweep(root: str, output: Path, *points: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(REPO / "tools" / "budget_sweep.py"), "--config-file", CONFIG,
           "--points", *points, "--output", str(output), *TINY]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_points_parse_and_bad_points_name_the_fix():
    tool = _load_tool()
    raw, constrained = tool.parse_point("raw"), tool.parse_point("0.8:0.1")
    assert raw.is_raw and raw.name == "raw"
    assert (constrained.weight, constrained.mu, constrained.name) == (0.8, 0.1, "lambda0.8_mu0.1")
    assert constrained.overrides()[:2] == ["MODEL.BUDGET.CONSTRAIN", "True"]
    for bad, words in (("0.8", "LAMBDA:MU"), ("a:b", "LAMBDA:MU"), ("0:0.1", "positive"),
                       ("0.5:1.5", "between 0 and 1")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            tool.parse_point(bad)


def test_budget_keys_in_overrides_are_refused(tmp_path):
    tool = _load_tool()
    with pytest.raises(SystemExit, match="set by the sweep itself"):
        tool.main(["--config-file", CONFIG, "--points", "raw", "--output", str(tmp_path),
                   "MODEL.BUDGET.LOSS_MU", "0.3"])


def test_sweep_writes_table_and_figure_and_resumes(tmp_path):
    root = generate_synthetic_cityscapes(str(tmp_path / "data"), num_train=2, num_val=1,
                                         height=32, width=64, progress=False)
    out = tmp_path / "sweep"

    # a first, half sweep: only Raw
    _sweep(root, out, "raw")
    raw_results = out / "raw" / "eval_results.json"
    assert raw_results.exists()
    first_mtime = raw_results.stat().st_mtime_ns
    with open(out / "budget_sweep.json") as f:
        assert [r["name"] for r in json.load(f)["points"]] == ["raw"]

    # the whole sweep: Raw is read back, only the constrained point trains
    proc = _sweep(root, out, "raw", "0.8:0.1")
    assert "raw: finished before, skipped" in proc.stderr
    assert "lambda0.8_mu0.1: training" in proc.stderr
    assert raw_results.stat().st_mtime_ns == first_mtime
    assert (out / "lambda0.8_mu0.1" / "eval_results.json").exists()

    with open(out / "budget_sweep.json") as f:
        table = json.load(f)
    rows = {r["name"]: r for r in table["points"]}
    assert list(rows) == ["raw", "lambda0.8_mu0.1"]
    assert rows["raw"]["lambda"] is None and rows["lambda0.8_mu0.1"]["mu"] == 0.1
    for r in rows.values():
        assert 0.0 <= r["mIoU"] <= 100.0
        assert 0.0 < r["GFLOPs_real_min"] <= r["GFLOPs_real"] <= r["GFLOPs_real_max"]
        assert 0.0 <= r["GFLOPs_expected"] < r["GFLOPs_real"]
        assert 0.0 <= r["gates_open_pct"] <= 100.0
    parts = table["flops"]["all_open_GFLOPs"]
    assert table["flops"]["size"] == [32, 64]
    # nothing routed costs more than all paths open, nor less than stem + decoder
    for r in rows.values():
        assert parts["stem"] + parts["head"] <= r["GFLOPs_real"] <= parts["real"] + 1e-9
    assert "| raw |" in (out / "budget_sweep.md").read_text()

    import matplotlib.image

    image = matplotlib.image.imread(out / "budget_sweep.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # the same folder with other settings is refused, naming the folder
    tool = _load_tool()
    with pytest.raises(SystemExit, match="other settings"):
        tool.main(["--config-file", CONFIG, "--points", "raw", "--output", str(out),
                   *TINY, "INPUT.FIX_SIZE_FOR_FLOPS", "[32, 64]"])


def test_sweep_config_budget_is_a_share_of_its_own_cells():
    """MODEL.BUDGET.FLOPS_ALL of the documented sweep's config is its network's all-open
    cell FLOPs at the training crop, so that MU is a share of those cells."""
    from detectron2.modeling import build_model

    from dyn_seg import get_dyn_seg_cfg
    from dyn_seg.modeling.meta_arch.analysis import all_open_flops

    cfg = get_dyn_seg_cfg(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cells = all_open_flops(build_model(cfg), tuple(cfg.INPUT.CROP.SIZE))["expected"]
    assert cfg.MODEL.BUDGET.FLOPS_ALL == pytest.approx(cells, abs=0.05)
