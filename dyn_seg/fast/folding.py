"""Inference-only convolutions with their norm folded in and their ReLU applied in place.

In eval mode a batch norm is a per-channel affine map, so ``norm(conv(x))`` equals one
convolution with rescaled weights and a bias. :func:`fold_conv` builds that convolution
from a detectron2 ``Conv2d`` (weights, norm and activation); norms that are not affine at
inference (GroupNorm, LayerNorm, a batch norm without running statistics) stay as modules.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FoldedConv", "fold_conv", "fold_sequence", "foldable_norm"]


def foldable_norm(norm: Optional[nn.Module]) -> bool:
    """True when ``norm`` is a per-channel affine map at inference (BN with running stats)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, _BatchNorm) and norm.running_mean is not None


def _norm_affine(norm: nn.Module, channels: int):
    """(scale, shift) in float64 with ``norm(y) == y * scale + shift`` per channel."""
    mean = norm.running_mean.detach().double()
    var = norm.running_var.detach().double()
    weight = norm.weight.detach().double() if norm.weight is not None else mean.new_ones(channels)
    bias = norm.bias.detach().double() if norm.bias is not None else mean.new_zeros(channels)
    scale = weight / torch.sqrt(var + norm.eps)
    return scale, bias - mean * scale


class FoldedConv(nn.Module):
    """``relu?(norm?(conv(x)))`` for inference, the norm folded into the weights if it can be.

    ``weight`` / ``bias`` are buffers (this module is never trained). ``norm`` is kept only
    for norms that cannot be folded. The ReLU runs in place on the fresh convolution output.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride, padding,
                 dilation, groups: int, relu: bool, norm: Optional[nn.Module] = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = groups
        self.relu = relu
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        if self.norm is not None:
            y = self.norm(y)
        return F.relu_(y) if self.relu else y


def _relu_flag(conv: nn.Module) -> bool:
    act = getattr(conv, "activation", None)
    if act is None:
        return False
    if act in (F.relu, F.relu_, torch.relu) or isinstance(act, nn.ReLU):
        return True
    raise ValueError(
        f"Cannot build a fast convolution with activation {act!r}: the fast path knows ReLU "
        "only. Set MODEL.FAST.ENABLED=False to run this model on the faithful path."
    )


def fold_conv(conv: nn.Conv2d, fold_norm: bool = True) -> FoldedConv:
    """A :class:`FoldedConv` equal (in eval mode) to detectron2 ``Conv2d`` ``conv``.

    ``fold_norm`` False keeps every norm as a module (to measure what folding gains).
    The folding is computed in float64 and stored in ``conv.weight``'s dtype.
    """
    norm = getattr(conv, "norm", None)
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    kept_norm = norm
    if norm is not None and fold_norm and foldable_norm(norm):
        scale, shift = _norm_affine(norm, weight.shape[0])
        folded_bias = shift if bias is None else bias.double() * scale + shift
        weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
        bias = folded_bias.to(conv.weight.dtype)
        kept_norm = None
    elif norm is not None:
        # a private copy in eval mode: the fast module must not switch the source's modes
        kept_norm = copy.deepcopy(norm).eval()
    return FoldedConv(
        weight.clone(), None if bias is None else bias.clone(),
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
        relu=_relu_flag(conv), norm=kept_norm,
    )


def fold_sequence(convs: Iterable[nn.Module], fold_norm: bool = True) -> nn.Sequential:
    """:func:`fold_conv` of every convolution of a sequence, as an ``nn.Sequential``."""
    return nn.Sequential(*[fold_conv(c, fold_norm) for c in convs])
