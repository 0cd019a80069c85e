"""Learning check of the dynamic Panoptic-DeepLab and Mask R-CNN (slow: minutes each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUDGET = {
    "panoptic": "configs/Synthetic/PanopticDeepLab-Tiny-Budget.yaml",
    "instance": "configs/Synthetic/MaskRCNN-Tiny-Budget.yaml",
}

#: How far above the untrained model the score must rise (points of PQ / mask AP).
RISE = {"panoptic": 15.0, "instance": 15.0}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DYN_SEG_LEARNING_CHECKS") != "1",
    reason="minutes per task: run with DYN_SEG_LEARNING_CHECKS=1 python -m pytest "
           "tests/tools/test_task_learning.py (or python tools/task_learning_check.py --task ...)")
@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_score_rises_and_budget_saves_flops(task, tmp_path):
    """PQ (panoptic) / mask AP (instance) on generated val scenes rise far above the
    untrained model's; the budget variant, trained the same way, runs on fewer real GFLOPs."""
    from dyn_seg.tools import task_learning_check

    result = task_learning_check.main(["--task", task, "--output", str(tmp_path),
                        "--budget-config", BUDGET[task], "--opts",
                        "DATALOADER.NUM_WORKERS", "0"])
    assert result["score_untrained"] < 5.0
    # measured: PQ 0 -> 34 after 450 iterations, mask AP 0 -> 41 (AP50 85) after 300
    assert result["score_trained"] > result["score_untrained"] + RISE[task], result
    # the routed cells' FLOPs are what the budget cuts, and with them the backbone's real ones
    assert result["expected_gflops_budget"] < 0.8 * result["expected_gflops_raw"], result
    assert result["backbone_gflops_budget"] < result["backbone_gflops_raw"], result
    # and the whole model's: Mask R-CNN's heads also follow its proposal and detection
    # counts, kept small beside the backbone by the config (20 detections, light heads)
    assert result["gflops_budget"] < result["gflops_raw"], result


def test_the_script_runs_the_check():
    """tools/task_learning_check.py is the command of dyn_seg.tools.task_learning_check."""
    out = subprocess.run([sys.executable, str(REPO / "tools" / "task_learning_check.py"),
                          "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: task_learning_check.py")
    assert "--budget-config" in out.stdout and "CHECK_OPTS" in out.stdout
