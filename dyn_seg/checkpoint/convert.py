"""Convert reference-implementation checkpoints to dyn_seg parameter names.

The reference (Megvii's ``dl_lib`` code) names parameters ``backbone.all_cell_list.L.I...``,
``...cell_ops._ops.K.op.J...``, ``...gate_conv_beta.0...`` and so on. This table maps them
to this package's module names; values are copied unchanged.

Every reference checkpoint kind converts:

* Dynamic networks: every key maps.
* Network-Fix networks carry a ``gate_weights_beta`` buffer (all ones) per cell in place of
  a gate; it is constant, so it is accepted and dropped (``ConversionReport.dropped``).
* ``conv_3x3_basic`` cell operations store their conv as ``op.weight`` and its norm as
  ``op.norm.*`` (no numbered sub-layers).
* ImageNet-pretrained Fix networks may carry ``module.`` prefixes and a classification
  head: keys outside ``backbone.`` / ``sem_seg_head.`` are reported as not part of a
  segmentation model. With ``backbone_only=True`` (initialising a Dynamic network from a Fix
  backbone) only backbone weights are kept, and the gates and the decoder the target lacks
  are listed as initialised fresh.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

# (reference pattern, dyn_seg replacement), applied in order to the whole key.
REFERENCE_KEY_MAP: List[Tuple[str, str]] = [
    (r"^backbone\.init_layer\.", "backbone.init_cell."),
    (r"^backbone\.all_cell_list\.(\d+)\.(\d+)\.", r"backbone.cells.\1.\2."),
    (r"\.cell_ops\._ops\.(\d+)\.op\.(\d+)\.", r".ops.\1.layers.\2."),
    # conv_3x3_basic: one conv with its norm, stored without a numbered sub-layer
    (r"\.cell_ops\._ops\.(\d+)\.op\.(weight|bias|norm\.)", r".ops.\1.layers.0.\2"),
    (r"\.res_up\.1\.", ".up."),
    (r"\.res_down\.1\.", ".down."),
    (r"\.gate_conv_beta\.0\.", ".gate.reduce."),
    (r"\.gate_conv_beta\.2\.", ".gate.proj."),
    (r"^sem_seg_head\.layer_decoder_list\.(\d+)\.", r"sem_seg_head.decoders.\1."),
]

# Reference keys that hold no trainable state of ours and are dropped on conversion:
# Network-Fix cells' constant gate weights (ones of shape (1, gate_num, 1, 1)); our cells
# without a gate use alpha = 1 directly (PAPER.md §2).
DROPPED_REFERENCE_KEYS: List[str] = [r"\.gate_weights_beta$"]

PARTS = ("backbone", "gates", "head")


def parameter_part(key: str) -> str:
    """Which part of a dyn_seg model a parameter belongs to: ``backbone``, ``gates``,
    ``head`` (the decoder) or ``other``."""
    if key.startswith("backbone."):
        return "gates" if ".gate." in key else "backbone"
    if key.startswith("sem_seg_head."):
        return "head"
    return "other"


def count_parts(keys: Iterable[str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for key in keys:
        part = parameter_part(key)
        counts[part] = counts.get(part, 0) + 1
    return counts


def describe_parts(keys: Iterable[str]) -> str:
    """``"backbone 12, gates 3"``: how many of ``keys`` fall in each part."""
    counts = count_parts(keys)
    return ", ".join(f"{p} {counts[p]}" for p in (*PARTS, "other") if counts.get(p))


def strip_module_prefix(key: str) -> str:
    """``module.x`` -> ``x`` (checkpoints saved from (Distributed)DataParallel, any depth)."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def map_reference_key(key: str) -> str:
    """The dyn_seg name of reference parameter ``key`` (unchanged when nothing matches)."""
    key = strip_module_prefix(key)
    for pattern, repl in REFERENCE_KEY_MAP:
        key = re.sub(pattern, repl, key)
    return key


def is_dropped_reference_key(key: str) -> bool:
    return any(re.search(p, key) for p in DROPPED_REFERENCE_KEYS)


@dataclass
class ConversionReport:
    """What a conversion did, key by key."""

    converted: int = 0
    dropped: List[str] = field(default_factory=list)  # constant buffers we do not keep
    not_segmentation: List[str] = field(default_factory=list)  # e.g. a classification head
    unmapped: List[str] = field(default_factory=list)  # backbone/head keys with no target
    missing: List[str] = field(default_factory=list)  # target keys nothing mapped to
    shape_mismatch: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)  # backbone_only: gates/decoder left at init
    left_out: List[str] = field(default_factory=list)  # backbone_only: gates/decoder not written
    backbone_only: bool = False

    @property
    def unmapped_backbone(self) -> List[str]:
        return [k for k in self.unmapped if parameter_part(map_reference_key(k)) == "backbone"]

    @property
    def missing_backbone(self) -> List[str]:
        return [k for k in self.missing if parameter_part(k) == "backbone"]

    @property
    def ok(self) -> bool:
        """Every parameter of the target gets a value (in ``backbone_only`` mode: every
        backbone parameter) and every key of the checkpoint found its place."""
        return not (self.unmapped or self.missing or self.shape_mismatch)

    def summary(self) -> str:
        lines = [f"converted {self.converted} tensors"]
        for title, keys in (
            ("constant Network-Fix gate buffers (gate_weights_beta), dropped", self.dropped),
            ("not part of a segmentation model, left out", self.not_segmentation),
            ("reference keys with no dyn_seg parameter", self.unmapped),
            ("dyn_seg parameters not found in the reference checkpoint", self.missing),
            ("shape mismatches", self.shape_mismatch),
            ("gates and decoder of the checkpoint not written (backbone only)", self.left_out),
            ("initialised fresh (gates and decoder keep their initial values)", self.fresh),
        ):
            if keys:
                parts = describe_parts(k.split(" ")[0] for k in keys)
                lines.append(f"{title} ({len(keys)}{'; ' + parts if parts else ''}):")
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
    *,
    backbone_only: bool = False,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename reference parameters; with ``target`` (a dyn_seg model's state dict) also report
    dropped, foreign, unmapped, missing and wrongly shaped keys. Only keys that found their
    place are in the result.

    ``backbone_only`` (needs ``target``): keep the backbone's weights only, e.g. to start a
    Dynamic network from a (possibly ImageNet-pretrained) Network-Fix backbone; the target's
    gates and decoder parameters are then listed in ``report.fresh`` instead of
    ``report.missing``.
    """
    if backbone_only and target is None:
        raise ValueError("backbone_only needs the target model's state dict")
    report = ConversionReport(backbone_only=backbone_only)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if is_dropped_reference_key(key):
            report.dropped.append(key)
            continue
        new = map_reference_key(key)
        part = parameter_part(new)
        if part == "other":
            report.not_segmentation.append(key)
            continue
        if backbone_only and part != "backbone":
            report.left_out.append(key)
            continue
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
        absent = sorted(k for k in target if k not in out)
        if backbone_only:
            report.fresh = [k for k in absent if parameter_part(k) in ("gates", "head")]
            report.missing = [k for k in absent if parameter_part(k) not in ("gates", "head")]
        else:
            report.missing = absent
    return out, report
