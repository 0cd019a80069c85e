"""Multi-node training through detectron2's launcher: two "machines" of one CPU process each
(``--num-machines 2 --machine-rank R --dist-url tcp://...``, gloo on localhost) train a few
iterations, end with identical weights and match one process on the same global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_helpers import (
    CONFIG,
    assert_ranks_hold_identical_parameters_and_buffers,
    assert_same_result_as_one_process,
)
from PIL import Image

from dyn_seg.data import generate_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent  # this module; its parent holds the helpers


def machine(argv):
    """``python -c`` entry: what ``train_net.py --num-machines M --machine-rank R --dist-url
    URL`` does on one machine (one process per machine here), with the report of
    ``distributed_helpers.train_worker``."""
    from detectron2.engine import launch
    from distributed_helpers import train_worker

    config, report, num_machines, rank, dist_url, reference_ranks = argv
    launch(train_worker, 1, num_machines=int(num_machines), machine_rank=int(rank),
           dist_url=dist_url, args=(["--config-file", config, "DATASETS.TEST", "()",
                                     "OUTPUT_DIR", str(Path(report).with_suffix(""))], report,
                                    int(reference_ranks)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(base: Path, config: Path, root: str, report: str, num_machines: int, rank: int,
           dist_url: str, reference_ranks: int = 2) -> subprocess.Popen:
    env = dict(os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}, {str(REPO)!r}]; "
            "import test_multinode; test_multinode.machine(sys.argv[1:])")
    return subprocess.Popen(
        [sys.executable, "-c", code, str(config), report, str(num_machines), str(rank),
         dist_url, str(reference_ranks)], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_machines_of_one_cpu_process_match_one_process(tmp_path):
    root = generate_synthetic_cityscapes(str(tmp_path / "data"), num_train=4, num_val=2,
                                         height=64, width=128, progress=False)
    for path in Path(root, "cityscapes", "gtFine", "train").rglob("*_labelTrainIds.png"):
        labels = np.asarray(Image.open(path)).copy()
        labels[labels == 255] = 0  # no ignored pixels: per-rank mean losses average exactly
        Image.fromarray(labels).save(path)
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)

    url = f"tcp://127.0.0.1:{_free_port()}"
    two, one = str(tmp_path / "machines2.pt"), str(tmp_path / "machines1.pt")
    rounding = str(tmp_path / "rounding.pt")  # the tolerance's rounding-level reference
    procs = [_start(tmp_path, config, root, two, 2, rank, url) for rank in (0, 1)]
    procs.append(_start(tmp_path, config, root, one, 1, 0, "auto"))
    procs.append(_start(tmp_path, config, root, rounding, 1, 0, "auto", reference_ranks=1))
    logs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        logs.append(out)
        assert proc.returncode == 0, out[-5000:]

    two, one, rounding = (torch.load(p, weights_only=False) for p in (two, one, rounding))
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert_ranks_hold_identical_parameters_and_buffers(two)
    assert_same_result_as_one_process(two, one, rounding)
