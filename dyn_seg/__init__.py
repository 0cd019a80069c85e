"""dyn_seg: Dynamic Routing for semantic segmentation (Li et al., CVPR 2020) on detectron2.

Importing the package registers its backbone, head and meta-architecture in detectron2's
registries (and its datasets in detectron2's catalogs).
"""
from . import data, modeling  # noqa: F401  (registration)
from .config import add_dynamic_routing_config, get_dyn_seg_cfg

__version__ = "0.1.0"
__all__ = ["add_dynamic_routing_config", "get_dyn_seg_cfg"]
