"""Export and deployment of routed segmentors that keep their per-image routing."""
from .module import OUTPUT_NAMES, VARIANTS, ExportableSegmentor, gate_columns

__all__ = ["OUTPUT_NAMES", "VARIANTS", "ExportableSegmentor", "gate_columns"]
