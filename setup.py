"""Packaging for dyn_seg: Dynamic Routing semantic segmentation on detectron2.

torch, torchvision and detectron2 are deliberately not listed in ``install_requires``:
they are platform specific (CUDA builds, index URLs) and detectron2 is not published on
PyPI under its own name. ``scripts/install.sh`` installs them first; see the README for
the manual routes.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    """``build_py`` that also ships the repository's ``configs/`` as ``dyn_seg/configs``
    (the source of truth stays ``configs/``; there is no second copy in git), so that
    ``dyn_seg.model_zoo`` and ``get_dyn_seg_cfg`` find them in a non-editable install."""

    def run(self):
        super().run()
        source = HERE / "configs"
        if not source.is_dir():  # building from an sdist without configs/
            raise FileNotFoundError(f"{source} is missing: dyn_seg needs its configs/")
        target = Path(self.build_lib) / "dyn_seg" / "configs"
        for path in sorted(source.rglob("*.yaml")):
            self.mkpath(str(target / path.relative_to(source).parent))
            self.copy_file(str(path), str(target / path.relative_to(source)))


def read_version() -> str:
    """Return ``__version__`` from ``dyn_seg/__init__.py``, or ``0.1.0`` if it has none."""
    init = HERE / "dyn_seg" / "__init__.py"
    if init.is_file():
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(), re.M)
        if match:
            return match.group(1)
    return "0.1.0"


setup(
    name="dyn_seg",
    version=read_version(),
    description="Dynamic Routing networks for semantic segmentation, as a detectron2 extension",
    packages=find_packages(include=["dyn_seg", "dyn_seg.*"]),
    # the trained Tiny network that model_zoo.get(..., trained=True) loads offline
    package_data={"dyn_seg.model_zoo": ["weights/*.pth"]},
    cmdclass={"build_py": BuildPyWithConfigs},  # + configs/ as dyn_seg/configs
    python_requires=">=3.9",
    install_requires=[
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        # cityscapesscripts' evaluator calls np.in1d, which numpy 2.4 removed.
        "numpy<2.4",
        "opencv-python-headless",
        "pycocotools",
        "cityscapesscripts",
        "tqdm",
        "tabulate",
        "matplotlib",
        "tensorboard",
        "omegaconf",
        "hydra-core",
        "yacs",
        "termcolor",
        "cloudpickle",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "ruff"],
    },
)
