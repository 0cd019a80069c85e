"""``import dyn_seg`` stays light, and the model package imports no tooling."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO


def test_import_registers_the_model_without_painter_benchmark_or_visualisation():
    code = (
        "import sys, dyn_seg\n"
        "from detectron2.modeling import META_ARCH_REGISTRY\n"
        "assert 'DynamicSemanticSegmentor' in META_ARCH_REGISTRY\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('dyn_seg'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert "dyn_seg.modeling.meta_arch" in loaded
    for heavy in ("dyn_seg.data.synthetic", "dyn_seg.benchmark", "dyn_seg.visualization"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy


def test_synthetic_painter_still_loads_on_first_use():
    from dyn_seg.data import generate_synthetic_cityscapes

    assert callable(generate_synthetic_cityscapes)


def test_model_package_imports_no_tooling():
    """dyn_seg/modeling imports neither the benchmark harness, the visualisation, the
    engine nor a copy of itself outside the package."""
    for path in (REPO / "dyn_seg" / "modeling").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("dyn_seg"), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("dyn_seg") for a in node.names), path.name
