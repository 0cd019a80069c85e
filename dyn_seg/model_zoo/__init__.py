"""Configs and models by name (``detectron2.model_zoo`` style)."""
from .model_zoo import (
    MODEL_ZOO_WEIGHTS,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    list_configs,
    verify_sha256,
)

__all__ = [
    "MODEL_ZOO_WEIGHTS",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_configs",
    "verify_sha256",
]
