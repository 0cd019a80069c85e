r"""Check a registered dataset (semantic, panoptic, instance or classification) for every
problem at once.

Decodes every image and label of a detectron2 dataset (e.g. cityscapes_fine_sem_seg_train,
voc_2012_sem_seg_val, cityscapes_fine_panoptic_train, cityscapes_fine_instance_seg_train,
imagenet_train) and lists all problems: missing or corrupt files, label values that are
neither a class id nor the ignore label, size mismatches, 16-bit images, damaged panoptic
PNGs, degenerate polygons, class indices out of range (errors), and grayscale images or
label maps without a class pixel (warnings). The task is told by the records' keys
(--task overrides it). Exits with status 1 when there are errors.

Example::

    python datasets/check_dataset.py --dataset cityscapes_fine_sem_seg_train \
        --dataset cityscapes_fine_sem_seg_val
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

import dyn_seg.data as dyn_data

ENV = "DETECTRON2_DATASETS"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", action="append", required=True, metavar="NAME",
        help="registered detectron2 dataset name (repeat for several)",
    )
    parser.add_argument(
        "--task", choices=("semantic", "panoptic", "instance", "classification"), default=None,
        help="what the records are for (default: told by their keys)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None,
        help="number of classes (default: length of the dataset's stuff_classes metadata)",
    )
    parser.add_argument(
        "--ignore-label", type=int, default=None,
        help="ignore label (default: the dataset's ignore_label metadata, else 255)",
    )
    parser.add_argument(
        "--datasets-root", default=None,
        help="dataset root; sets DETECTRON2_DATASETS before detectron2 registers its datasets",
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    parser.add_argument("--strict", action="store_true", help="also fail on warnings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Check the datasets; return 0 when clean, 1 on problems, 2 when one cannot be loaded."""
    args = parse_args(argv)
    if args.datasets_root:
        root = os.path.abspath(args.datasets_root)
        if _registered_root() != root:
            return _check_in_new_interpreter(root, sys.argv[1:] if argv is None else argv)
        os.environ[ENV] = root
    status = 0
    for name in args.dataset:
        if name not in DatasetCatalog.list():
            print(f"error: dataset {name!r} is not registered", file=sys.stderr)
            status = 2
            continue
        meta = MetadataCatalog.get(name)
        try:
            dicts = DatasetCatalog.get(name)
        except Exception as e:  # loaders raise assertion, file and value errors
            print(f"error: cannot load dataset {name}: {type(e).__name__}: {e}", file=sys.stderr)
            status = 2
            continue
        task = args.task or dyn_data.task_of_records(dicts)
        num_classes = args.num_classes
        if num_classes is None and task != "instance":
            # semantic / panoptic: stuff_classes; classification: classes (set by its loader)
            key = "classes" if task == "classification" else "stuff_classes"
            classes = meta.get(key, None)
            if not classes:
                print(f"error: {name} has no {key} metadata; pass --num-classes",
                      file=sys.stderr)
                status = 2
                continue
            num_classes = len(classes)
        ignore_label = args.ignore_label
        if ignore_label is None:
            ignore_label = int(meta.get("ignore_label", 255))
        print(f"Checking {name} ({task}): {len(dicts)} records"
              + (f", {num_classes} classes" if num_classes else "")
              + (f", ignore label {ignore_label}" if task in ("semantic", "panoptic") else ""))
        problems = dyn_data.check_dataset(
            dicts, task, num_classes or 0, ignore_label=ignore_label,
            progress=not args.no_progress, num_workers=args.workers,
        )
        for message in problems:
            print(message)
        errors = sum(dyn_data.is_error(m) for m in problems)
        warnings = len(problems) - errors
        print(f"{name}: {len(dicts)} records checked, {errors} error(s), {warnings} warning(s)")
        if errors or (args.strict and warnings):
            status = max(status, 1)
    return status


def _registered_root() -> str:
    """The dataset root the registered datasets read from: ``$DETECTRON2_DATASETS`` (else
    ``datasets``) as ``import dyn_seg`` found it, when detectron2's builtin datasets and
    dyn_seg's were registered."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV, "datasets")))


def _check_in_new_interpreter(root: str, argv: List[str]) -> int:
    """Run the check in a new Python with ``DETECTRON2_DATASETS=root``, so that the datasets
    are registered from ``root`` (detectron2 reads the variable once, when imported, and this
    module imports it); its output goes where this process's goes. Returns its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from dyn_seg.tools.check_dataset import main; sys.exit(main(sys.argv[1:]))")
    package_parent = str(Path(dyn_data.__file__).resolve().parents[2])
    return subprocess.call([sys.executable, "-c", code, package_parent, *argv],
                           env={**os.environ, ENV: root})


if __name__ == "__main__":
    sys.exit(main())
