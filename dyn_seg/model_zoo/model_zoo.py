"""Configs and models by name, in the style of ``detectron2.model_zoo``.

``get_config_file("Cityscapes/Dynamic-L16-B.yaml")`` -> path of the file under ``configs/``;
``get_config(...)`` -> a CfgNode with dyn_seg's keys and the file merged;
``get(...)`` -> the built model (eval mode), optionally with known trained weights.

Trained weights ship inside the package where they are small: ``Synthetic/Dynamic-Tiny.yaml``
has ``weights/Dynamic-Tiny.pth`` (the main job's recipe, scripts/run_main_job.sh: 300
iterations on the generated street scenes; fp16 state dict). Their sha256 is checked
whenever they are used, so ``get("Synthetic/Dynamic-Tiny.yaml", trained=True)`` and
``get_config(..., trained=True)`` work offline, right after installation.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from ..checkpoint import DynSegCheckpointer
from ..config import config_root, get_dyn_seg_cfg

__all__ = ["MODEL_ZOO_WEIGHTS", "get", "get_checkpoint_url", "get_config", "get_config_file",
           "list_configs", "verify_sha256"]

# Trained weights this project knows: config path -> {"url": URL or a file in this package's
# weights/ folder, "sha256": ..., "bytes": size}. The authors' released checkpoints are
# distributed from their own pages; convert them with tools/convert_reference_checkpoint.py
# and pass MODEL.WEIGHTS (see MODEL_ZOO.md).
MODEL_ZOO_WEIGHTS: Dict[str, Dict[str, str]] = {
    "Synthetic/Dynamic-Tiny.yaml": {
        "url": "weights/Dynamic-Tiny.pth",
        "sha256": "8c81726acdf3e71f76737a1584f6550092ce992211968599a315340731c30d88",
        "bytes": "962937",
    },
}
_WEIGHTS_DIR = Path(__file__).resolve().parent


def list_configs() -> List[str]:
    """Config paths relative to ``configs/`` (e.g. ``Cityscapes/Dynamic-L16-B.yaml``)."""
    root = config_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))


def get_config_file(config_path: str) -> str:
    """Absolute path of ``configs/<config_path>``; clear error listing what exists."""
    path = config_root() / config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{config_path!r} is not a dyn_seg config; available: {list_configs()}"
        )
    return str(path)


def get_config(config_path: str, trained: bool = False) -> CfgNode:
    """A config with dyn_seg's keys and ``configs/<config_path>`` merged; with ``trained``,
    ``MODEL.WEIGHTS`` points at the known trained checkpoint."""
    cfg = get_dyn_seg_cfg(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
        if "://" not in cfg.MODEL.WEIGHTS:  # shipped with the package: check it right here
            verify_sha256(cfg.MODEL.WEIGHTS, MODEL_ZOO_WEIGHTS[config_path]["sha256"])
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def get_checkpoint_url(config_path: str) -> str:
    if config_path not in MODEL_ZOO_WEIGHTS:
        raise KeyError(
            f"No trained weights are registered for {config_path!r}. Download the authors' "
            "released checkpoint, convert it with `python tools/convert_reference_checkpoint.py "
            f"IN OUT --config-file configs/{config_path}` and set MODEL.WEIGHTS to OUT."
        )
    url = MODEL_ZOO_WEIGHTS[config_path]["url"]
    if "://" in url:
        return url
    path = _WEIGHTS_DIR / url
    if not path.is_file():
        raise FileNotFoundError(
            f"The trained weights of {config_path!r} should ship with dyn_seg as {path}, but "
            "the file is missing: reinstall dyn_seg from a complete source checkout."
        )
    return str(path)


def verify_sha256(path: str, expected: str) -> None:
    """Raise ValueError unless the file's sha256 is ``expected`` (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ValueError(
            f"sha256 of {path} is {digest.hexdigest()}, expected {expected}: the file is "
            "corrupt or not the published one; delete it and download (or reinstall) again."
        )


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """The model of ``configs/<config_path>`` in eval mode (with its trained weights when
    ``trained``; their sha256 is checked when known)."""
    cfg = get_config(config_path, trained)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    if trained:
        local = PathManager.get_local_path(cfg.MODEL.WEIGHTS)
        known = MODEL_ZOO_WEIGHTS[config_path].get("sha256")
        if known and os.path.abspath(local) != os.path.abspath(cfg.MODEL.WEIGHTS):
            verify_sha256(local, known)  # downloaded (local files were checked above)
        DynSegCheckpointer(model, inference=True).load(local)
    return model.eval()
