"""dyn_seg: Dynamic Routing for semantic segmentation (Li et al., CVPR 2020) on detectron2.

Importing the package registers its backbone, head and meta-architecture in detectron2's
registries (and its datasets in detectron2's catalogs).
"""
import warnings

with warnings.catch_warnings():
    # fvcore and detectron2 decorate functions with torch.jit.script at import, which
    # PyTorch 2.14 reports as deprecated: noise for every user of dyn_seg and its entry
    # points (which import dyn_seg first), silenced for these imports only
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    from . import data, modeling  # noqa: F401  (registration)
    from .config import add_dynamic_routing_config, get_dyn_seg_cfg

__version__ = "0.1.0"
__all__ = ["add_dynamic_routing_config", "get_dyn_seg_cfg"]
