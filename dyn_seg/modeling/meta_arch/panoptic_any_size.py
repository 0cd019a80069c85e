"""Panoptic-DeepLab inference at any input size.

Two limits of detectron2's Panoptic-DeepLab are lifted here: the ASPP's image pooling
(below) and its post-processing, which fails on outputs 1 px high or wide (its centre
heatmap is squeezed to fewer than two dimensions) and on outputs of fewer pixels than
``MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE``: :func:`forward_any_size` lowers the top k to the
pixel count for such images, and asks for 1 px high (wide) outputs 2 px high (wide) and
keeps the first row (column), which holds exactly the values of a 1 px output since
bilinear upsampling of one row repeats it.

ASPP image pooling.

detectron2's ``ASPP`` (the context module of both Panoptic-DeepLab heads) averages its
image-pooling branch over a window of the training crop (``INPUT.CROP.SIZE`` divided by the
feature stride) with stride 1, and refuses feature maps that the window does not tile: at
test time any input whose padded size is not a multiple of the crop fails with ``ValueError:
`pool_kernel_size` must be divisible``. During training the crop *is* the feature map, so
the window averages the whole map. ``MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING`` chooses what
inference does:

* ``"global"`` (default): average the whole feature map, as training does on its crops
  (what detectron2's DeepLab ASPP does with ``pool_kernel_size=None``). Any input size
  works; at the crop's size the result equals detectron2's.
* ``"crop"``: detectron2's window of the training crop (pooled locally on larger inputs);
  inputs whose padded size the crop does not tile are refused with a message naming the
  sizes and this key.

Training always uses detectron2's window.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ASPP
from detectron2.structures import BitMasks, Instances
from torch import nn

__all__ = [
    "ASPP_TEST_POOLINGS",
    "ASPPImagePooling",
    "configure_aspp_pooling",
    "forward_any_size",
]

#: Values of ``MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING``.
ASPP_TEST_POOLINGS = ("global", "crop")


class ASPPImagePooling(nn.Module):
    """Average pooling of the ASPP image branch: a ``kernel_size`` window with stride 1 in
    training (and at test time with ``test_global=False``), the whole map at test time with
    ``test_global=True``. ``stride`` (of the pooled feature) only names pixel sizes in the
    error message."""

    def __init__(self, kernel_size: Tuple[int, int], stride: int, test_global: bool):
        super().__init__()
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = int(stride)
        self.test_global = test_global

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_global and not self.training:
            return F.adaptive_avg_pool2d(x, 1)
        (kh, kw), (h, w) = self.kernel_size, x.shape[-2:]
        if h % kh or w % kw:
            s = self.stride
            raise ValueError(
                f"Panoptic-DeepLab's ASPP pools windows of the training crop ({kh * s}x{kw * s} "
                f"px, INPUT.CROP.SIZE), which must tile the input, but the input padded to "
                f"the backbone's stride is {h * s}x{w * s} px (height x width). Set "
                f"MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING \"global\" to pool the whole image "
                f"at test time (any size works), or resize the inputs to multiples of "
                f"{kh * s}x{kw * s}."
            )
        return F.avg_pool2d(x, self.kernel_size, stride=1)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"test_global={self.test_global}")


def configure_aspp_pooling(model: nn.Module, test_pooling: str, crop_size) -> int:
    """Replace the windowed image pooling of every detectron2 ``ASPP`` in ``model`` by
    :class:`ASPPImagePooling` for ``test_pooling`` (one of :data:`ASPP_TEST_POOLINGS`);
    ``crop_size`` is ``INPUT.CROP.SIZE`` (h, w). No parameter changes, so checkpoints load
    as before. Returns the number of ASPP modules changed."""
    if test_pooling not in ASPP_TEST_POOLINGS:
        raise ValueError(
            f"MODEL.PANOPTIC_DEEPLAB.TEST_ASPP_POOLING={test_pooling!r} is not known: use one "
            f"of {', '.join(repr(p) for p in ASPP_TEST_POOLINGS)} (see "
            "dyn_seg.modeling.aspp_pooling)."
        )
    changed = 0
    for aspp in model.modules():
        if not isinstance(aspp, ASPP) or aspp.pool_kernel_size is None:
            continue
        branch = aspp.convs[-1]
        kernel = tuple(aspp.pool_kernel_size)
        stride = int(crop_size[0]) // kernel[0]
        branch[0] = ASPPImagePooling(kernel, stride, test_global=test_pooling == "global")
        aspp.pool_kernel_size = None  # the size check is ASPPImagePooling's now
        changed += 1
    return changed


def _output_size(inputs: Dict) -> Tuple[int, int]:
    image = inputs["image"]
    return int(inputs.get("height", image.shape[-2])), int(inputs.get("width", image.shape[-1]))


def _crop_result(result: Dict, height: int, width: int) -> Dict:
    """An inference result of Panoptic-DeepLab cut to its top-left ``height`` x ``width``."""
    out = dict(result)
    out["sem_seg"] = result["sem_seg"][:, :height, :width]
    panoptic, segments = result["panoptic_seg"]
    out["panoptic_seg"] = (panoptic[:height, :width], segments)
    if "instances" in result:
        old = result["instances"]
        masks = old.pred_masks[:, :height, :width]
        keep = masks.flatten(1).any(dim=1)  # instances seen in the kept row or column
        if keep.any():
            new = Instances((height, width))
            new.pred_masks = masks[keep]
            new.pred_classes = old.pred_classes[keep]
            new.scores = old.scores[keep]
            new.pred_boxes = BitMasks(new.pred_masks).get_bounding_boxes()
            out["instances"] = new
        else:
            del out["instances"]
    return out


def forward_any_size(model: nn.Module, forward: Callable[[List[Dict]], List[Dict]],
                     batched_inputs: List[Dict]) -> List[Dict]:
    """Run Panoptic-DeepLab's inference ``forward`` of ``model`` on ``batched_inputs`` at
    any output size (``height`` / ``width``, else the image's size, where detectron2
    alone needs both keys).

    Outputs of at least 2x2 px and ``model.top_k`` pixels run as detectron2 runs them, in
    one batch. Smaller ones run one at a time: with ``top_k`` lowered to the pixel count
    (detectron2 asks ``torch.topk`` for more pixels than there are), and 1 px high (wide)
    outputs computed 2 px high (wide) and cut back (see the module docstring).
    """
    top_k = model.top_k
    sizes = [_output_size(x) for x in batched_inputs]
    # detectron2 needs "height" and "width"; without them, the output has the image's size
    batched_inputs = [x if "height" in x and "width" in x else dict(x, height=h, width=w)
                      for x, (h, w) in zip(batched_inputs, sizes)]
    small = [min(h, w) < 2 or (top_k is not None and h * w < top_k) for h, w in sizes]
    if not any(small):
        return forward(batched_inputs)
    results: List[Dict] = [None] * len(batched_inputs)
    regular = [i for i, s in enumerate(small) if not s]
    if regular:
        for i, r in zip(regular, forward([batched_inputs[i] for i in regular])):
            results[i] = r
    try:
        for i in (i for i, s in enumerate(small) if s):
            (h, w), asked = sizes[i], (max(sizes[i][0], 2), max(sizes[i][1], 2))
            if top_k is not None:
                model.top_k = min(top_k, asked[0] * asked[1])
            r = forward([dict(batched_inputs[i], height=asked[0], width=asked[1])])[0]
            results[i] = _crop_result(r, h, w) if asked != (h, w) else r
    finally:
        model.top_k = top_k
    return results
