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
    assert "dyn_seg.modeling.meta_arch.semantic" in loaded
    for heavy in ("dyn_seg.synthetic", "dyn_seg.data.synthetic", "dyn_seg.benchmark",
                  "dyn_seg.visualization"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy


def test_synthetic_painter_still_loads_on_first_use():
    from dyn_seg.data import generate_synthetic_cityscapes

    assert callable(generate_synthetic_cityscapes)


#: The import rules: each part of the package (a subpackage or top-level module of
#: ``dyn_seg``) and the other parts it may import, absolutely or relatively (the rest of its
#: own part always). A re-layout of the files edits this table only.
MODELING = "dyn_seg.modeling"
LAYERS = {
    "dyn_seg": {"dyn_seg.config", "dyn_seg.data", MODELING},
    "dyn_seg.config": set(),
    "dyn_seg.config_checks": set(),
    # the model package, bottom up: the method's pieces, their cost, how they run, the
    # network, heads, meta-architectures; no data, engine or tooling anywhere in it
    MODELING: {f"{MODELING}.{p}" for p in ("routing", "cost", "execution", "network",
                                            "heads", "meta_arch")},
    f"{MODELING}.routing": set(),
    f"{MODELING}.cost": {f"{MODELING}.routing"},
    f"{MODELING}.execution": {f"{MODELING}.routing", f"{MODELING}.cost"},
    f"{MODELING}.network": {f"{MODELING}.routing", f"{MODELING}.cost",
                            f"{MODELING}.execution"},
    f"{MODELING}.heads": {f"{MODELING}.routing", f"{MODELING}.cost"},
    f"{MODELING}.meta_arch": {f"{MODELING}.routing", f"{MODELING}.cost",
                              f"{MODELING}.execution", f"{MODELING}.network",
                              f"{MODELING}.heads", "dyn_seg.config_checks"},
    "dyn_seg.checkpoint": set(),
    "dyn_seg.data": {"dyn_seg.synthetic", "dyn_seg.config_checks"},  # synthetic: on first use
    "dyn_seg.synthetic": {"dyn_seg.data"},
    "dyn_seg.evaluation": {MODELING},
    "dyn_seg.tasks": {"dyn_seg.data", "dyn_seg.engine", "dyn_seg.evaluation"},
    "dyn_seg.engine": {"dyn_seg.checkpoint", "dyn_seg.config", "dyn_seg.data",
                       MODELING, "dyn_seg.tasks"},
    "dyn_seg.model_zoo": {"dyn_seg.checkpoint", "dyn_seg.config"},
    "dyn_seg.visualization": {MODELING, "dyn_seg.tasks"},
    "dyn_seg.benchmark": {"dyn_seg", "dyn_seg.engine", MODELING, "dyn_seg.utils",
                          "dyn_seg.export"},
    # deployment: exportable module, exporters, runtimes (generated sample scenes)
    "dyn_seg.export": {MODELING, "dyn_seg.checkpoint", "dyn_seg.synthetic"},
    "dyn_seg.utils": {"dyn_seg.engine"},
    # the command-line programs (thin scripts in tools/, datasets/, train_net.py call them)
    "dyn_seg.tools": {"dyn_seg", "dyn_seg.config", "dyn_seg.config_checks", "dyn_seg.data",
                      "dyn_seg.synthetic", "dyn_seg.checkpoint", MODELING,
                      "dyn_seg.evaluation", "dyn_seg.tasks", "dyn_seg.engine",
                      "dyn_seg.model_zoo", "dyn_seg.visualization", "dyn_seg.benchmark",
                      "dyn_seg.export", "dyn_seg.utils"},
}


def _part(module: str) -> str:
    """The part of ``module`` in LAYERS: ``dyn_seg.X``, or ``dyn_seg.modeling.X`` for the
    model package's subpackages."""
    parts = module.split(".")
    sub = ".".join(parts[:3])
    return sub if parts[:2] == MODELING.split(".") and sub in LAYERS else ".".join(parts[:2])


def _allowed(own: str, target: str) -> bool:
    """Whether part ``own`` may import part ``target``: the model package as a whole
    includes its subpackages for the packages above it."""
    allowed = LAYERS[own] | {own}
    outside = not own.startswith(MODELING)
    return target in allowed or (outside and MODELING in allowed
                                 and target.startswith(MODELING + "."))


def _imports(path):
    """The dyn_seg modules ``path`` imports, relative imports resolved."""
    rel = path.relative_to(REPO).with_suffix("").parts
    package = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                yield ".".join(base + [node.module])
            else:
                yield from (".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _violations(path):
    rel = path.relative_to(REPO).with_suffix("").parts
    own = _part(".".join(rel[:-1] if rel[-1] == "__init__" else rel))
    return [(str(path.relative_to(REPO)), target) for target in _imports(path)
            if target.split(".")[0] == "dyn_seg" and not _allowed(own, _part(target))]


def test_every_import_follows_the_layer_table():
    """Absolute and relative imports alike (the package imports relatively)."""
    files = sorted((REPO / "dyn_seg").rglob("*.py"))
    unknown = {_part(".".join(p.relative_to(REPO).with_suffix("").parts)) for p in files}
    unknown = {p.removesuffix(".__init__") for p in unknown} - set(LAYERS)
    assert not unknown, f"parts missing from LAYERS: {sorted(unknown)}"
    found = [v for p in files for v in _violations(p)]
    assert not found, found


def test_the_layer_check_catches_a_relative_import_across_layers(tmp_path, monkeypatch):
    """A relative import from the model package into the engine is a violation."""
    import test_package_layout as layout

    fake = tmp_path / "dyn_seg" / "modeling" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..engine import Trainer\nfrom .backbone import DynamicNetwork\n")
    monkeypatch.setattr(layout, "REPO", tmp_path)
    assert layout._violations(fake) == [("dyn_seg/modeling/bad.py", "dyn_seg.engine")]


def test_the_layer_check_catches_an_upward_import_inside_the_model_package(tmp_path,
                                                                            monkeypatch):
    """The cost layer may use the routing pieces, not the meta-architectures above it."""
    import test_package_layout as layout

    fake = tmp_path / "dyn_seg" / "modeling" / "cost" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..routing.cell import GATE_EPS\nfrom ..meta_arch.routed import X\n"
                    "from . import flops\n")
    monkeypatch.setattr(layout, "REPO", tmp_path)
    assert layout._violations(fake) == [("dyn_seg/modeling/cost/bad.py",
                                         "dyn_seg.modeling.meta_arch.routed")]


def test_tests_are_grouped_like_the_package():
    """Each folder of tests/ is named after the part of dyn_seg it tests (a subpackage or a
    module); tests of the whole project (docs, layout, wheel, CUDA, the end-to-end
    pipeline) and the shared helpers stay at the top. Module names stay unique, since
    pytest imports the test files by their names."""
    tests = REPO / "tests"
    groups = [p for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    assert groups
    for group in groups:
        part = REPO / "dyn_seg" / group.name
        assert part.is_dir() or part.with_suffix(".py").is_file(), group.name
        assert list(group.glob("test_*.py")), f"tests/{group.name} holds no test"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
