"""The network as one exportable program: images in, segmentation, gates and GFLOPs out.

:class:`ExportableSegmentor` wraps an :class:`~dyn_seg.modeling.InferenceCopy` of a
semantic segmentor run by a :class:`~dyn_seg.modeling.execution.plans.GraphPlan` (every routing
decision a device tensor), with the input normalisation in front. Its outputs are plain
tensors under string keys, so ``torch.export``, the ONNX exporter and detectron2's
``TracingAdapter`` all flatten them:

* ``sem_seg``: (N, K, H, W) float32 logits at input resolution;
* ``gates``: (N, T) gate activations of every cell side by side (:func:`gate_columns`
  names the columns; zeros where a cell received nothing);
* ``gflops``: (N,) real GFLOPs per image (stem + the cells the gates kept + decoder),
  computed inside the program from the gates.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from dyn_seg.modeling import InferenceCopy, InferenceOptions

__all__ = ["OUTPUT_NAMES", "VARIANTS", "ExportableSegmentor", "gate_columns"]

OUTPUT_NAMES = ("sem_seg", "gates", "gflops")
# "conditional": closed paths are not computed (torch.cond / ONNX If); "dense": every path
# computed and weighted (no control flow: tracing, runtimes without conditionals)
VARIANTS = ("conditional", "dense")


def _cell_specs(network) -> list:
    """The init cell's spec, then the routed cells' layer by layer."""
    return [network.init_spec] + [s for layer in network.cell_specs for s in layer]


def gate_columns(network) -> List[Tuple[int, int, str]]:
    """``(layer, scale, path)`` of each column of the ``gates`` output (init cell first,
    then the routed cells layer by layer, paths in gate-channel order)."""
    return [(s.layer, s.scale, p) for s in _cell_specs(network) for p in s.paths]


class ExportableSegmentor(nn.Module):
    """``forward(image)``: (N, 3, H, W) float images in the model's input format (BGR,
    0-255, as detectron2's mappers give them), H and W multiples of the backbone's
    ``size_divisibility`` -> ``{"sem_seg", "gates", "gflops"}`` (see the module doc).

    Built from ``model``'s current weights (batch norms folded, float32, NCHW).
    ``variant``: one of :data:`VARIANTS`.
    """

    def __init__(self, model: nn.Module, variant: str = "conditional", fold_bn: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not allowed: use one of {list(VARIANTS)}.")
        if not hasattr(model, "sem_seg_head"):
            raise ValueError(
                f"ExportableSegmentor exports semantic segmentors (DynamicSemanticSegmentor); "
                f"{type(model).__name__} has no sem_seg_head."
            )
        self.variant = variant
        options = InferenceOptions(fold_bn=fold_bn, channels_last=False,
                                   plan_name=f"graph-{variant}")
        self.copy = InferenceCopy(model, options)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().float(), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().float(), False)
        self.eval()

    @property
    def size_divisibility(self) -> int:
        return self.copy.backbone.size_divisibility

    def check_size(self, height: int, width: int) -> None:
        d = self.size_divisibility
        if height % d or width % d:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of {d} "
                "(MODEL.BACKBONE.MAX_STRIDE); pad or resize the image first "
                "(tools/export_model.py pads the sample image)."
            )

    def train(self, mode: bool = True):
        return super().train(False)  # inference only: the copy's norms are folded

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.check_size(int(image.shape[-2]), int(image.shape[-1]))
        x = (image.float() - self.pixel_mean) / self.pixel_std
        logits, _, record = self.copy(x)
        backbone = self.copy.backbone
        size = backbone.counting_size(x)
        gates = torch.cat([
            record.routing[(s.layer, s.scale)].alpha
            if record.routing[(s.layer, s.scale)].alpha is not None
            else x.new_zeros(x.shape[0], s.num_paths)
            for s in _cell_specs(backbone)], dim=1)
        # real FLOPs of the segmentor: routed cells + stem (backbone) + decoder
        real = record.backbone_flops + self.copy.head.flops(size)
        return {"sem_seg": logits, "gates": gates, "gflops": real * 1e-3}
