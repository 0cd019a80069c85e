"""Tiny routed models whose gates differ image by image, for the plan tests."""
from __future__ import annotations

import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.benchmark import calibrate_batch_norm


def varied_images(n: int, seed: int, size=(64, 128)) -> torch.Tensor:
    """Images with different brightness and contrast, so that gates differ per image."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.linspace(-60, 60, n).view(n, 1, 1, 1)
    contrast = torch.linspace(10, 60, n).view(n, 1, 1, 1)
    return torch.randn(n, 3, *size, generator=g) * contrast + offset


def routed_tiny_model(seed: int = 0, **overrides):
    """A tiny eval-mode model with calibrated norms and input-dependent random gates."""
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(**overrides))
    calibrate_batch_norm(model, lambda b: model.sem_seg_head.stride4_logits(model.backbone(b)),
                         [varied_images(4, seed + 100 + k) for k in range(2)])
    with torch.no_grad():
        for cell in model.backbone.all_cells():
            if cell.gate is not None:
                cell.gate.proj.weight.normal_(0.0, 10.0)
                cell.gate.proj.bias.uniform_(-0.5, 0.5)
    return model.eval()
