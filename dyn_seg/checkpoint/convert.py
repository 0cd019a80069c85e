"""Convert reference-implementation checkpoints to dyn_seg parameter names.

The reference (Megvii's ``dl_lib`` code) names parameters ``backbone.all_cell_list.L.I...``,
``...cell_ops._ops.K.op.J...``, ``...gate_conv_beta.0...`` and so on. This table maps them
to this package's module names; values are copied unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

# (reference pattern, dyn_seg replacement), applied in order to the whole key.
REFERENCE_KEY_MAP: List[Tuple[str, str]] = [
    (r"^backbone\.init_layer\.", "backbone.init_cell."),
    (r"^backbone\.all_cell_list\.(\d+)\.(\d+)\.", r"backbone.cells.\1.\2."),
    (r"\.cell_ops\._ops\.(\d+)\.op\.(\d+)\.", r".ops.\1.layers.\2."),
    (r"\.res_up\.1\.", ".up."),
    (r"\.res_down\.1\.", ".down."),
    (r"\.gate_conv_beta\.0\.", ".gate.reduce."),
    (r"\.gate_conv_beta\.2\.", ".gate.proj."),
    (r"^sem_seg_head\.layer_decoder_list\.(\d+)\.", r"sem_seg_head.decoders.\1."),
]


def map_reference_key(key: str) -> str:
    """The dyn_seg name of reference parameter ``key`` (unchanged when nothing matches)."""
    key = re.sub(r"^module\.", "", key)  # checkpoints saved from DistributedDataParallel
    for pattern, repl in REFERENCE_KEY_MAP:
        key = re.sub(pattern, repl, key)
    return key


@dataclass
class ConversionReport:
    """What a conversion did: keys the target lacks, keys it has but did not get, shape clashes."""

    converted: int = 0
    unmapped: List[str] = field(default_factory=list)  # reference keys with no target
    missing: List[str] = field(default_factory=list)  # target keys nothing mapped to
    shape_mismatch: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.missing or self.shape_mismatch)

    def summary(self) -> str:
        lines = [f"converted {self.converted} tensors"]
        for title, keys in (
            ("reference keys with no dyn_seg parameter", self.unmapped),
            ("dyn_seg parameters not found in the reference checkpoint", self.missing),
            ("shape mismatches", self.shape_mismatch),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)}):")
                lines += [f"  {k}" for k in keys]
        return "\n".join(lines)


def extract_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``{"model": sd}``, ``{"state_dict": sd}`` or ``sd``."""
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return dict(checkpoint[key])
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError(
        "Not a model checkpoint: expected a state dict of tensors or a dict with a 'model' "
        f"or 'state_dict' entry; found keys {sorted(checkpoint)[:8]}."
    )


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    target: Optional[Mapping[str, torch.Tensor]] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename reference parameters; with ``target`` (a dyn_seg model's state dict) also report
    unmapped, missing and wrongly shaped keys. Unmapped keys are left out of the result."""
    report = ConversionReport()
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = map_reference_key(key)
        if target is not None:
            if new not in target:
                report.unmapped.append(key)
                continue
            if tuple(target[new].shape) != tuple(value.shape):
                report.shape_mismatch.append(
                    f"{key} -> {new}: {tuple(value.shape)} vs {tuple(target[new].shape)}"
                )
                continue
        out[new] = value
    report.converted = len(out)
    if target is not None:
        report.missing = sorted(k for k in target if k not in out)
    return out, report
