from .checkpointer import CheckpointError, DynSegCheckpointer
from .convert import (
    REFERENCE_KEY_MAP,
    ConversionReport,
    convert_reference_state_dict,
    extract_state_dict,
    map_reference_key,
)

__all__ = [
    "CheckpointError",
    "DynSegCheckpointer",
    "REFERENCE_KEY_MAP",
    "ConversionReport",
    "convert_reference_state_dict",
    "extract_state_dict",
    "map_reference_key",
]
