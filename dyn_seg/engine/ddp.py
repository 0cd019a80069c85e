"""DistributedDataParallel that also works for CPU models (``--num-gpus N`` without GPUs).

detectron2's ``launch`` picks the gloo backend when no GPU is present, but its
``create_ddp_model`` always passes ``device_ids=[local_rank]``, which
``DistributedDataParallel`` rejects for a CPU module. Here CPU models get ``device_ids=None``.
"""
from __future__ import annotations

from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm
from torch import nn

__all__ = ["create_ddp_model"]


def _is_cpu_model(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "cpu"


def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False, **kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model`` (``model`` itself for one process), with
    ``device_ids=None`` for a model on the CPU."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs and _is_cpu_model(model):
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
