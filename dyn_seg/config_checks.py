"""Config values checked when the model is built, with messages that name the key, the
value and what is allowed (most keys are checked by the module that reads them; these are
detectron2 keys read by detectron2's own helpers, whose errors are raw)."""
from __future__ import annotations

from detectron2.utils import comm

__all__ = ["NORMS", "check_model_config", "check_num_classes"]

#: Normalisation names detectron2's ``get_norm`` accepts ("" = no normalisation).
NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN", "")
#: Norms that need torch's ``SyncBatchNorm``, which synchronises across CUDA devices only.
_CUDA_ONLY_NORMS = ("SyncBN", "nnSyncBN")


def check_num_classes(num_classes: int) -> None:
    """Raise ValueError for ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` below 1 (the model and the
    semantic data mapper both call this)."""
    if num_classes < 1:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} is not allowed: it must be >= 1 "
            "(19 for Cityscapes, 21 for PASCAL VOC)."
        )


def check_model_config(cfg) -> None:
    """Raise ValueError for ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` below 1, an unknown norm name,
    or ``SyncBN`` / ``nnSyncBN`` when several processes train on CPUs."""
    check_num_classes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    for key in ("MODEL.BACKBONE.NORM", "MODEL.SEM_SEG_HEAD.NORM"):
        norm = cfg.MODEL[key.split(".")[1]].NORM
        if not isinstance(norm, str):
            continue  # a callable: detectron2's get_norm builds it as given
        if norm not in NORMS:
            raise ValueError(
                f"{key}={norm!r} is not a normalisation detectron2 knows: use one of "
                f"{', '.join(repr(n) for n in NORMS)} (naiveSyncBN also works on CPUs)."
            )
        world = comm.get_world_size()
        if norm in _CUDA_ONLY_NORMS and world > 1 and not str(cfg.MODEL.DEVICE).startswith("cuda"):
            raise ValueError(
                f"{key}={norm!r} synchronises batch statistics with torch's SyncBatchNorm, "
                f"which runs on CUDA devices only, but {world} processes run on "
                f"MODEL.DEVICE={cfg.MODEL.DEVICE!r}: use {key} naiveSyncBN "
                "(detectron2's all-reduce version, which works on CPUs with gloo)."
            )
