"""Context modules on the coarsest feature of the routed backbone: PSP and ASPP.

The paper's best Cityscapes result puts a pyramid-pooling context module (PSPNet, Zhao et
al. 2017) on top of the routing space. :class:`DynamicContextSemSegHead` is the simple
fusing decoder of :class:`DynamicSemSegHead` with the coarsest feature first passed through
a context module of the same width, so that the decoder fuses the context into every finer
level on its top-down pass:

* ``"PSP"``: :class:`PyramidPooling`, average pooling to ``bins`` x ``bins`` (1, 2, 3, 6),
  a 1x1 conv (C -> C/len(bins)) with norm and ReLU per bin, bilinear upsampling back,
  concatenation with the input and a 3x3 conv (2C -> C) with norm and ReLU;
* ``"ASPP"``: detectron2's :class:`~detectron2.layers.ASPP` (DeepLabV3) with C output
  channels.

FLOPs follow the project's counting rules (:mod:`dyn_seg.modeling.cost.flops`) on the true map
size of the coarsest stride: adaptive average pooling costs ``H*W*C`` (every input element
is read once), upsampling and concatenation are free, biases are not counted.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ASPP, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..cost.flops import MEGA, conv_flops, scale_size
from ..routing.layers import ConvSpec, build_conv, kaiming_init, pointwise
from .sem_seg import DynamicSemSegHead, decode

__all__ = [
    "CONTEXT_MODULES",
    "DynamicContextSemSegHead",
    "PyramidPooling",
    "aspp_flops",
    "build_context_module",
]

CONTEXT_MODULES = ("PSP", "ASPP")


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module, width preserving: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6), norm: str = "BN"):
        super().__init__()
        if not bins or min(bins) < 1:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONTEXT.PSP_BINS={list(bins)} is not allowed: give one or "
                "more positive pooling sizes, e.g. [1, 2, 3, 6]."
            )
        if channels % len(bins):
            raise ValueError(
                f"PSP on {channels} channels with {len(bins)} bins: the channels must divide by "
                "the number of bins (each bin gets channels / bins); change PSP_BINS."
            )
        self.bins = tuple(int(b) for b in bins)
        self.norm = norm
        self.branch_spec = pointwise(channels, channels // len(self.bins))
        self.branches = nn.ModuleList(build_conv(self.branch_spec, norm) for _ in self.bins)
        self.fuse_spec = ConvSpec(2 * channels, channels, 3, norm=True, relu=True)
        self.fuse = build_conv(self.fuse_spec, norm)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear",
                          align_corners=False)
            for b, branch in zip(self.bins, self.branches)
        ]
        return self.fuse(torch.cat([x] + pooled, dim=1))

    def flops(self, h: int, w: int) -> float:
        """Multiply-adds on an ``h`` x ``w`` map (not MFLOPs)."""
        c = self.branch_spec.in_channels
        total = 0.0
        for b in self.bins:
            total += h * w * c  # adaptive average pooling reads every element once
            total += conv_flops(self.branch_spec, b, b, self.norm)[0]
        return total + conv_flops(self.fuse_spec, h, w, self.norm)[0]


def aspp_flops(aspp: ASPP, channels: int, h: int, w: int, norm: str) -> float:
    """Multiply-adds of detectron2's ``ASPP`` (norm ``norm``, ReLU, global image pooling)
    with ``channels`` in and out on an ``h`` x ``w`` map, by the project's rules."""
    dilations = [conv.dilation[0] for conv in list(aspp.convs)[1:4]]
    with_norm = bool(norm)
    specs = [ConvSpec(channels, channels, 1, norm=with_norm, relu=True)]
    specs += [ConvSpec(channels, channels, 3, dilation=d, norm=with_norm, relu=True)
              for d in dilations]
    specs.append(ConvSpec(5 * channels, channels, 1, norm=with_norm, relu=True))
    total = sum(conv_flops(s, h, w, norm)[0] for s in specs)
    total += h * w * channels  # image pooling: global average
    # its 1x1 conv (with bias, not counted) and ReLU at 1x1
    total += conv_flops(ConvSpec(channels, channels, 1, relu=True), 1, 1, norm)[0]
    return total


def build_context_module(name: str, channels: int, norm: str, *, bins: Sequence[int] = (1, 2, 3, 6),
                         dilations: Sequence[int] = (3, 6, 9), dropout: float = 0.0) -> nn.Module:
    """A width-preserving context module by name (:data:`CONTEXT_MODULES`)."""
    if name == "PSP":
        return PyramidPooling(channels, bins, norm)
    if name == "ASPP":
        if len(dilations) != 3:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONTEXT.ASPP_DILATIONS={list(dilations)} is not allowed: "
                "ASPP takes exactly 3 dilations, e.g. [3, 6, 9]."
            )
        return ASPP(channels, channels, list(dilations), norm=norm, activation=F.relu,
                    dropout=dropout)
    raise ValueError(
        f"MODEL.SEM_SEG_HEAD.CONTEXT.NAME={name!r} is not allowed: use one of {CONTEXT_MODULES}."
    )


@SEM_SEG_HEADS_REGISTRY.register()
class DynamicContextSemSegHead(DynamicSemSegHead):
    """:class:`DynamicSemSegHead` with a context module (PSP or ASPP) on the coarsest feature.

    Same outputs, losses and parameter names as the plain head, plus ``context.*``. When the
    coarsest feature is missing (None: its cell received nothing), the context module does
    not run and the decoder proceeds as the plain head does.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, context: str = "PSP",
                 psp_bins: Sequence[int] = (1, 2, 3, 6), aspp_dilations: Sequence[int] = (3, 6, 9),
                 aspp_dropout: float = 0.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        coarsest = self.in_features[-1]
        self.context_name = context
        self.context_channels = input_shape[coarsest].channels
        self.context = build_context_module(
            context, self.context_channels, self.norm, bins=psp_bins, dilations=aspp_dilations,
            dropout=aspp_dropout,
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.SEM_SEG_HEAD.CONTEXT
        ret.update(context=c.NAME, psp_bins=list(c.PSP_BINS),
                   aspp_dilations=list(c.ASPP_DILATIONS), aspp_dropout=c.ASPP_DROPOUT)
        return ret

    def with_context(self, features: Dict[str, Optional[torch.Tensor]],
                     present: Optional[Dict] = None) -> Dict[str, Optional[torch.Tensor]]:
        """``features`` with the coarsest one replaced by its context module's output (not
        where the coarsest feature is missing: None or its ``present`` flag False)."""
        coarsest = self.in_features[-1]
        x = features.get(coarsest)
        flag = True if present is None else present.get(coarsest, True)
        if x is None or flag is False:
            return features
        out = self.context(x)
        if flag is not True:  # a device flag: zero where the feature is missing
            out = torch.where(flag, out, 0.0)
        return {**features, coarsest: out}

    def stride4_logits(self, features: Dict[str, Optional[torch.Tensor]],
                       present: Optional[Dict] = None) -> torch.Tensor:
        """Logits at stride 4: the plain decoder over the features with context."""
        return decode(self.with_context(features, present), self.in_features, self.decoders,
                      self.predictor, present)

    def context_flops(self, size: Tuple[int, int]) -> float:
        """MFLOPs of the context module at counting size ``size`` (when it runs)."""
        h, w = scale_size(size, self.strides[-1])
        if self.context_name == "PSP":
            return self.context.flops(h, w) / MEGA
        return aspp_flops(self.context, self.context_channels, h, w, self.norm) / MEGA

    def flops(self, size: Tuple[int, int]) -> float:
        """The decoder's MFLOPs plus the context module's: one constant per counting size,
        as the decoder's (the context module is counted even for an image whose coarsest
        feature was never computed)."""
        return super().flops(size) + self.context_flops(size)
