"""Context heads (PSP, ASPP) on the routed backbone: build, run, train step, FLOPs."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from dyn_seg.modeling.heads.context import DynamicContextSemSegHead
from dyn_seg.modeling.heads.sem_seg import DynamicSemSegHead
from dyn_seg.modeling.meta_arch.analysis import all_open_flops

# Tiny network: INIT_CHANNEL 8, so the stride-32 feature has 64 channels; a 128 x 128 input
# gives it a 4 x 4 map. Norm "BN" counts once per element.
C, H, W = 64, 4, 4


def psp_mflops_by_hand() -> float:
    """PSP with bins 1, 2, 3, 6 on a C x 4 x 4 map, derived term by term."""
    pools = 4 * (H * W * C)  # four adaptive average poolings read the map once each
    # per bin b: 1x1 conv C -> C/4 at b x b, its norm and ReLU: (C * C/4 + 2 * C/4) * b^2
    branches = sum((C * (C // 4) + 2 * (C // 4)) * b * b for b in (1, 2, 3, 6))
    fuse = 9 * (2 * C) * C * H * W + 2 * C * H * W  # 3x3 conv 2C -> C, norm, ReLU
    assert (pools, branches, fuse) == (4096, 52800, 1181696)
    return (pools + branches + fuse) / 1e6


def aspp_mflops_by_hand() -> float:
    """detectron2's ASPP (C -> C, BN, ReLU) on a C x 4 x 4 map, derived term by term."""
    one_by_one = C * C * H * W + 2 * C * H * W
    atrous = 3 * (9 * C * C * H * W + 2 * C * H * W)
    image_pool = H * W * C + C * C + C  # global pooling, 1x1 conv at 1x1 (bias free), ReLU
    project = 5 * C * C * H * W + 2 * C * H * W
    assert (one_by_one, atrous, image_pool, project) == (67584, 1775616, 5184, 329728)
    return (one_by_one + atrous + image_pool + project) / 1e6


def context_cfg(name: str):
    return tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NAME": "DynamicContextSemSegHead",
                       "MODEL.SEM_SEG_HEAD.CONTEXT.NAME": name,
                       "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5,
                       "MODEL.FAST.ENABLED": False})


@pytest.mark.parametrize("name, by_hand", [("PSP", psp_mflops_by_hand),
                                           ("ASPP", aspp_mflops_by_hand)])
def test_context_head_builds_runs_trains_and_counts_flops(name, by_hand):
    torch.manual_seed(0)
    model = build_model(context_cfg(name))
    head = model.sem_seg_head
    assert isinstance(head, DynamicContextSemSegHead)
    assert head.context_flops((128, 128)) == pytest.approx(by_hand(), rel=1e-12)

    # the head's FLOPs are the plain decoder's plus the context module's
    plain = DynamicSemSegHead(model.backbone.output_shape(), num_classes=5)
    assert head.flops((128, 128)) == pytest.approx(
        plain.flops((128, 128)) + by_hand(), rel=1e-12)
    open_flops = all_open_flops(model, (128, 128))
    assert open_flops["head"] == pytest.approx(head.flops((128, 128)))

    # one training step: the context module receives gradients
    inputs = [{"image": torch.rand(3, 128, 128) * 255,
               "sem_seg": torch.randint(0, 5, (128, 128))} for _ in range(2)]
    model.train()
    losses = model(inputs)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in head.context.parameters() if p.requires_grad)

    # inference: full-size logits, and the context's FLOPs inside the real FLOPs
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"], "height": 128, "width": 128}])[0]
    assert out["sem_seg"].shape == (5, 128, 128)
    assert torch.isfinite(out["sem_seg"]).all()


def test_context_skipped_when_coarsest_feature_missing():
    model = build_model(context_cfg("PSP")).eval()
    head = model.sem_seg_head
    features = {"layer_0": torch.rand(1, 8, 32, 32), "layer_1": torch.rand(1, 16, 16, 16),
                "layer_2": torch.rand(1, 32, 8, 8), "layer_3": None}
    with torch.no_grad():
        logits, _ = head(features)
    assert logits.shape == (1, 5, 128, 128)
    plain = DynamicSemSegHead(model.backbone.output_shape(), num_classes=5)
    plain.load_state_dict({k: v for k, v in head.state_dict().items()
                           if not k.startswith("context.")})
    plain.eval()
    with torch.no_grad():
        plain_logits, _ = plain(features)
    assert torch.allclose(logits, plain_logits)


def test_unknown_context_module_is_named():
    with pytest.raises(ValueError, match="CONTEXT.NAME='PPM'.*PSP"):
        build_model(context_cfg("PPM"))
