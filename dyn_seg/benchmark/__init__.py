"""Measurement helpers behind ``tools/benchmark.py``: the interleaved benchmark harness and
forced gate patterns (with norm calibration) to measure routing behaviour untrained.

Not imported by ``import dyn_seg``; nothing in the model imports it.
"""
from .harness import (
    INFERENCE_MODES,
    TRAINING_MODES,
    all_open_real_gflops,
    benchmark_inference,
    benchmark_training,
    device_name,
    parse_gates,
    prepare_weights,
)
from .patterns import (
    GATE_PATTERN_UNITS,
    GatePattern,
    apply_gate_pattern,
    calibrate_batch_norm,
    random_gate_pattern,
)

__all__ = [
    "GATE_PATTERN_UNITS",
    "GatePattern",
    "INFERENCE_MODES",
    "TRAINING_MODES",
    "all_open_real_gflops",
    "apply_gate_pattern",
    "benchmark_inference",
    "benchmark_training",
    "calibrate_batch_norm",
    "device_name",
    "parse_gates",
    "prepare_weights",
    "random_gate_pattern",
]
