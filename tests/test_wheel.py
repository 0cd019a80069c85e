"""A non-editable install: the wheel ships the configs (and the Tiny weights), so that
``dyn_seg.model_zoo`` and the README's Python snippet work from an installed package."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _readme_snippet() -> str:
    """The README's Python block that loads a model through ``model_zoo``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return next(b for b in blocks if "model_zoo.get_config(" in b)


def test_model_zoo_and_readme_snippet_work_from_an_installed_wheel(tmp_path):
    # the files setup.py reads, copied so that the build leaves the checkout untouched
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dyn_seg", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in"):  # MANIFEST.in: for sdists
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("dyn_seg-*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    assert (site / "dyn_seg" / "configs" / "Base-DynamicRouting.yaml").is_file()
    assert not (site / "configs").exists()  # inside the package, not beside it

    run = tmp_path / "run"  # away from the checkout: only the installed package is found
    run.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    Image.fromarray(image).save(run / "street.png")
    check = (
        "import dyn_seg, os\n"
        f"assert dyn_seg.__file__.startswith({str(site)!r}), dyn_seg.__file__\n"
        "from dyn_seg import model_zoo\n"
        "configs = model_zoo.list_configs()\n"
        f"assert len(configs) == {len(list((REPO / 'configs').rglob('*.yaml')))}, configs\n"
        "cfg = model_zoo.get_config('Cityscapes/Dynamic-L16-B.yaml')  # with a _BASE_\n"
        "assert cfg.MODEL.BACKBONE.LAYER_NUM == 16\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", check + _readme_snippet()], cwd=run,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "'real'" in proc.stdout and "'expected'" in proc.stdout  # the snippet's FLOPs
