from .checkpointer import MIN_TRAINING_COVERAGE, CheckpointError, DynSegCheckpointer
from .convert import (
    DROPPED_REFERENCE_KEYS,
    REFERENCE_KEY_MAP,
    ConversionReport,
    convert_reference_state_dict,
    extract_state_dict,
    map_reference_key,
    parameter_part,
)

__all__ = [
    "CheckpointError",
    "DROPPED_REFERENCE_KEYS",
    "DynSegCheckpointer",
    "MIN_TRAINING_COVERAGE",
    "REFERENCE_KEY_MAP",
    "ConversionReport",
    "convert_reference_state_dict",
    "extract_state_dict",
    "map_reference_key",
    "parameter_part",
]
