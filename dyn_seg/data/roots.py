"""A clear error when a registered dataset's files are not where ``DETECTRON2_DATASETS`` says.

detectron2's builtin datasets (and ours) are read from ``$DETECTRON2_DATASETS``, or from
``./datasets`` when the variable is unset. A missing folder surfaces as a bare
``FileNotFoundError: ... 'datasets/cityscapes/leftImg8bit/train'`` from deep inside the
loader. :func:`explain_missing_dataset_roots` wraps loaders so that such an error names the
variable, the folder it looked in and ``datasets/README.md``; ``import dyn_seg`` wraps those
that read from the dataset root (:func:`root_based_datasets`: detectron2's builtin
datasets and dyn_seg's), never a user's own registrations.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional

from detectron2.data import DatasetCatalog

__all__ = [
    "DatasetRootError",
    "dataset_root_message",
    "explain_missing_dataset_roots",
    "root_based_datasets",
]

#: Modules whose registered loaders read from ``$DETECTRON2_DATASETS``: detectron2's
#: builtin datasets (``detectron2.data.datasets.builtin``) and dyn_seg's.
ROOT_BASED_MODULES = ("detectron2.data.datasets", "dyn_seg.data")

ENV = "DETECTRON2_DATASETS"


class DatasetRootError(FileNotFoundError):
    """A dataset's files are missing under the dataset root."""


def dataset_root_message(name: str, missing: str) -> str:
    """The message for dataset ``name`` whose file or folder ``missing`` does not exist."""
    value = os.environ.get(ENV)
    root = os.path.abspath(os.path.expanduser(value or "datasets"))
    if value is None:
        where = f"{ENV} is not set, so datasets are read from ./datasets ({root})"
    elif not os.path.isdir(root):
        where = f"{ENV}={value} points at nothing: {root} does not exist"
    else:
        where = f"{ENV}={value} ({root})"
    return (
        f"dataset {name!r} not found: {where}, and {missing} is missing. Set {ENV} to the "
        f"folder that holds the datasets (e.g. export {ENV}=/data/datasets with "
        f"/data/datasets/cityscapes/leftImg8bit/...); the expected layouts and the preparation "
        f"scripts are described in datasets/README.md."
    )


def _explained(name: str, loader):
    def load():
        try:
            return loader()
        except DatasetRootError:
            raise
        except FileNotFoundError as e:
            missing = e.filename or str(e)
            raise DatasetRootError(dataset_root_message(name, missing)) from e

    load.explains_missing_root = True
    return load


def root_based_datasets() -> List[str]:
    """The registered datasets whose loaders are defined in :data:`ROOT_BASED_MODULES`."""
    return [name for name in DatasetCatalog.list()
            if getattr(DatasetCatalog[name], "__module__", "").startswith(ROOT_BASED_MODULES)]


def explain_missing_dataset_roots(names: Optional[Iterable[str]] = None) -> None:
    """Wrap the datasets ``names`` (default: every one registered so far) so that a missing
    file raises :class:`DatasetRootError` with :func:`dataset_root_message`."""
    for name in list(DatasetCatalog.list() if names is None else names):
        loader = DatasetCatalog[name]
        if getattr(loader, "explains_missing_root", False):
            continue  # already wrapped
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _explained(name, loader))
