"""The commands and code of README.md and docs/*.md exist, and the cheap ones run as written.

Run here: every ``python SCRIPT --help`` (in this process), the README's ``DynSegPredictor``
snippet (as written, with the Tiny weights shipped in the package, on an image made in a
temporary folder) and docs/ROUTING.md's Python snippet (on the Tiny config with weights made
in a temporary folder), the synthetic-data generator commands (into
a temporary root), the dataset check on that data, and the FAQ's ``FLOPS_ALL`` command.

Every shell command of the docs must be either run here or listed in ``EXCLUDED`` with the
place that covers it, so that a new command in the docs needs a decision. Not run here:

* ``bash scripts/run_main_job.sh`` and ``bash scripts/run_tests.sh``: the main job and CI
  (``.ci/run``) run them; ``bash scripts/install.sh`` and pip: installation.
* ``python train_net.py`` (training, ``--eval-only``): tests/test_pipeline_e2e.py,
  tests/engine/test_crash_safety.py, tests/engine/test_determinism.py,
  tests/engine/test_distributed.py.
* ``python tools/budget_sweep.py``: tests/benchmark/test_budget_sweep.py (the documented
  sweep trains for minutes).
* ``python tools/visualize_routing.py``: tests/visualization/test_visualize_routing.py;
  ``python tools/demo.py``: tests/engine/test_predictor.py; ``python tools/benchmark.py``:
  tests/benchmark/test_benchmark_tool.py; ``python tools/analyze_model.py`` on other
  configs: tests/tools/test_analyze_model.py; ``python tools/convert_reference_checkpoint.py``:
  tests/modeling/test_reference_parity.py and tests/config/test_configs.py (it needs a
  reference checkpoint).
* ``python datasets/prepare_cityscapes.py`` / ``prepare_voc.py``: they need the real
  datasets; tests/data/test_data_synthetic.py and tests/data/test_data_check.py.
* ``python tools/export_model.py`` and ``python tools/deploy/run_exported.py`` (an export
  takes minutes): tests/export/test_export.py runs both tools on a small config, and every
  format and export method on routed images.
"""
from __future__ import annotations

import glob
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TWO_COMMANDS = ("bash scripts/run_main_job.sh", "bash scripts/run_tests.sh")
MAX_IMAGE_BYTES = 200 * 1024

EXCLUDED = [re.compile(p) for p in (
    r"^bash scripts/(run_main_job|run_tests|install)\.sh$",
    r"^python train_net\.py (?!--help$)",
    # task_learning_check: run by tests/tools/test_task_learning.py (opt-in, minutes per task)
    r"^python tools/(visualize_routing|demo|benchmark|convert_reference_checkpoint|budget_sweep"
    r"|task_learning_check|export_model|deploy/run_exported)\.py "
    r"(?!--help$)",
    r"^python tools/analyze_model\.py (?!--help$)(?!.*configs/Synthetic/)",
    r"^python datasets/prepare_(cityscapes|voc)\.py(?! --help$)",
    r"^(\.venv/bin/)?(python -m )?pip install ",
    r"^tensorboard ",
    r"^source \.venv/bin/activate$",
)]
HELP = re.compile(r"^python ([\w/.-]+\.py) --help$")
GENERATE = re.compile(r"^(export DETECTRON2_DATASETS=\$\()?(python datasets/"
                      r"generate_synthetic_cityscapes\.py[^)]*)\)?$")
CHECK = re.compile(r"^python datasets/check_dataset\.py (?!--help$)")
ANALYZE_TINY = re.compile(r"^python tools/analyze_model\.py .*configs/Synthetic/")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_blocks(path: Path) -> Iterator[Tuple[str, str]]:
    """(language, text) of every fenced code block."""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", _read(path), re.M | re.S):
        yield match.group(1), match.group(2)


def _shell_commands(path: Path) -> List[str]:
    """The commands of the ``bash`` blocks: continuations joined, comments dropped."""
    commands = []
    for lang, text in _code_blocks(path):
        if lang not in ("bash", "sh"):
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def _all_commands() -> List[Tuple[str, str]]:
    return [(p.name, c) for p in DOCS for c in _shell_commands(p)]


def _python_snippet(path: Path, marker: str) -> str:
    blocks = [text for lang, text in _code_blocks(path) if lang == "python" and marker in text]
    assert len(blocks) == 1, f"{path.name}: expected one python block with {marker!r}"
    return blocks[0]


def _substitute(text: str, replacements: Dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, (
            f"the documented snippet no longer contains {old!r}; update tests/test_docs.py "
            "with what the snippet uses now"
        )
        text = text.replace(old, new)
    return text


def _run_script(argv: List[str], monkeypatch) -> int:
    """Run ``python SCRIPT ARGS`` in this process; returns the exit status."""
    script = REPO / argv[0]
    monkeypatch.setattr(sys, "argv", [str(script), *argv[1:]])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def _expand_braces(pattern: str) -> List[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [p for option in match.group(1).split(",")
            for p in _expand_braces(head + option + tail)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_readme_holds_the_two_commands_in_code_blocks():
    commands = _shell_commands(REPO / "README.md")
    for command in TWO_COMMANDS:
        assert command in commands, f"README.md lost the command {command!r}"
        assert (REPO / command.split()[1]).is_file()


def test_every_documented_command_is_run_here_or_excluded():
    handled = [HELP, GENERATE, CHECK, ANALYZE_TINY, *EXCLUDED]
    unknown = [f"{doc}: {cmd}" for doc, cmd in _all_commands()
               if not any(p.search(cmd) for p in handled)]
    assert not unknown, (
        "commands in the docs that tests/test_docs.py neither runs nor excludes (add them to "
        "one of its lists):\n" + "\n".join(unknown)
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_referenced_scripts_configs_links_and_images_exist(doc):
    text = _read(doc)
    missing = []
    for script in re.findall(r"(?<![\w/.])(?:python3?|bash)\s+([\w./-]+\.(?:py|sh))\b", text):
        if not (REPO / script).is_file():
            missing.append(script)
    for config in re.findall(r"(?<![\w/])(?:configs/)?((?:Cityscapes|PascalVOC|Synthetic)/"
                             r"[\w{},.*-]+\.yaml)", text):
        for pattern in _expand_braces(config):
            if not glob.glob(str(REPO / "configs" / pattern)):
                missing.append(f"configs/{pattern}")
    anchors = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            missing.append(target)
            continue
        if anchor and path.suffix == ".md":
            heads = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", _read(path), re.M)}
            if anchor not in (heads if target else anchors):
                missing.append(f"{target}#{anchor}")
        if path.suffix == ".png" and path.stat().st_size > MAX_IMAGE_BYTES:
            missing.append(f"{target} is over {MAX_IMAGE_BYTES // 1024} KB")
    assert not missing, f"{doc.name} refers to what does not exist: {sorted(set(missing))}"


def test_help_of_every_documented_script(monkeypatch, capsys):
    scripts = sorted({HELP.match(cmd).group(1) for _, cmd in _all_commands() if HELP.match(cmd)})
    assert {"train_net.py", "tools/visualize_routing.py", "tools/demo.py",
            "tools/analyze_model.py"} <= set(scripts)
    for script in scripts:
        assert _run_script([script, "--help"], monkeypatch) == 0, script
        out = capsys.readouterr().out
        assert out.startswith("usage:"), f"{script} --help printed {out[:200]!r}"


def test_generate_and_check_commands_run_on_small_data(tmp_path, monkeypatch, capsys):
    generated = []
    for doc, cmd in _all_commands():
        match = GENERATE.match(cmd)
        if not match or cmd.endswith("--help"):
            continue
        argv = shlex.split(match.group(2))[1:]
        root = tmp_path / f"root{len(generated)}"
        if "--root" in argv:
            argv[argv.index("--root") + 1] = str(root)
        else:
            argv += ["--root", str(root)]
        assert _run_script(argv, monkeypatch) == 0, f"{doc}: {cmd}"
        assert capsys.readouterr().out.strip() == str(root.resolve())
        opts = {flag: value for flag, value in zip(argv, argv[1:] + [""])
                if flag.startswith("--") and not value.startswith("--")}
        for split, flag, default in (("train", "--num-train", 24), ("val", "--num-val", 8)):
            images = list((root / "cityscapes" / "leftImg8bit" / split).glob("*/*.png"))
            assert len(images) == int(opts.get(flag, default)), f"{doc}: {cmd}"
        generated.append(root)
    assert generated, "the docs show no generate_synthetic_cityscapes.py command any more"

    checks = [cmd for _, cmd in _all_commands() if CHECK.match(cmd)]
    assert checks, "the docs show no check_dataset.py command any more"
    env = {**os.environ, "DETECTRON2_DATASETS": str(generated[0]), "OMP_NUM_THREADS": "1"}
    for cmd in sorted(set(checks)):
        argv = [sys.executable, *shlex.split(cmd)[1:], "--no-progress"]
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
        assert "0 error(s)" in done.stdout


def test_faq_flops_all_command_prints_the_config_value(monkeypatch, capsys):
    from dyn_seg import model_zoo

    readme = _read(REPO / "README.md")
    commands = [cmd for _, cmd in _all_commands() if ANALYZE_TINY.match(cmd)]
    assert commands, "the FAQ's analyze_model.py command for FLOPS_ALL is gone"
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        assert _run_script(argv, monkeypatch) == 0
        out = capsys.readouterr().out
        cells = re.search(r"expected \(cells\)\s+([\d.]+)", out)
        assert cells, out
        config = argv[argv.index("--config-file") + 1].split("configs/", 1)[1]
        flops_all = model_zoo.get_config(config).MODEL.BUDGET.FLOPS_ALL
        assert float(cells.group(1)) * 1000 == pytest.approx(flops_all, abs=0.05)
        assert cells.group(1) in readme and f"FLOPS_ALL: {flops_all:g}" in readme


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A randomly initialised Dynamic-Tiny model, saved as a checkpoint."""
    from detectron2.modeling import build_model

    from dyn_seg import model_zoo

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(model_zoo.get_config("Synthetic/Dynamic-Tiny.yaml"))
                .state_dict()}, path)
    return path


def _street(height: int = 96, width: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 2)


def test_readme_predictor_snippet_runs(tmp_path, capsys):
    """As written, with the Tiny weights that ship with dyn_seg."""
    image_path = tmp_path / "street.png"
    cv2.imwrite(str(image_path), _street())
    snippet = _substitute(_python_snippet(REPO / "README.md", "DynSegPredictor(cfg)"), {
        '"street.png"': repr(str(image_path)),
    })
    scope: Dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), scope)

    assert tuple(scope["labels"].shape) == (96, 200)
    flops = scope["out"]["flops"]
    assert flops["real"] > flops["backbone"] > flops["expected"] > 0  # as the comment says
    assert scope["out"]["routing"], "README says out['routing'] holds the gate activations"
    assert str(flops["real"]) in capsys.readouterr().out


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling creates the file
        return (open, (self.path, "w"))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_readme_predictor_snippet_refuses_payload_pickle(tmp_path, suffix):
    import pickle

    from dyn_seg.checkpoint import CheckpointError

    marker = tmp_path / "payload-ran"
    evil = tmp_path / f"model{suffix}"
    payload = {"model": {}, "x": _Payload(marker)}
    if suffix == ".pkl":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    snippet = _substitute(_python_snippet(REPO / "README.md", "DynSegPredictor(cfg)"), {
        "predictor = DynSegPredictor(cfg)":
            f"cfg.MODEL.WEIGHTS = {str(evil)!r}\npredictor = DynSegPredictor(cfg)",
    })
    with pytest.raises(CheckpointError, match="allow_unsafe_pickle"):
        exec(compile(snippet, "README.md", "exec"), {})
    assert not marker.exists()


def test_routing_doc_python_snippet_runs(tiny_weights, tmp_path, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from dyn_seg import model_zoo

    model = build_model(model_zoo.get_config("Synthetic/Dynamic-Tiny.yaml"))
    DetectionCheckpointer(model).load(str(tiny_weights))
    model.eval()
    image = _street(64, 128)
    with torch.no_grad():
        outputs = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}]
                        * 2)
    monkeypatch.chdir(tmp_path)
    scope = {"model": model, "outputs": outputs, "image_bgr": image}
    exec(compile(_python_snippet(REPO / "docs" / "ROUTING.md", "collect_routing_stats"),
                 "ROUTING.md", "exec"), scope)

    assert scope["stats"].num_images == 2
    for name in ("routing.png", "one.png"):
        assert cv2.imread(str(tmp_path / name)) is not None


def test_readme_says_what_importing_dyn_seg_registers():
    """The README's sentence on registration names exactly what the registries gain."""
    import re

    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    import dyn_seg  # noqa: F401

    text = _read(REPO / "README.md")
    sentence = text[text.index("Importing `dyn_seg` registers"):]
    sentence = sentence[:sentence.index("\n\n")]

    def named(kind):
        part = re.search(kind + r" \((.*?)\)", sentence, re.S).group(1)
        return set(re.findall(r"`(\w+)`", part))

    ours = {
        "backbones": {n for n, _ in BACKBONE_REGISTRY if "dynamic_routing" in n},
        "semantic heads": {n for n, _ in SEM_SEG_HEADS_REGISTRY if n.startswith("Dynamic")},
        "meta-architectures": {n for n, _ in META_ARCH_REGISTRY if n.startswith("Dynamic")},
    }
    for kind, names in ours.items():
        assert named(kind) == names, kind
