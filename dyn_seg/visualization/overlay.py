"""Segmentation overlays whose class names stay readable on any class colour.

detectron2's ``Visualizer`` writes each class name in (a lighter shade of) the class colour
on a translucent black box, so dark classes (Cityscapes' road, car, sky...) are dark text on
black. :class:`SegmentationVisualizer` writes the name in black or white, whichever
contrasts more with the class colour, on an opaque box of that colour with an outline of
the text colour, so that the box also stands apart from the image under it.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.colors as mplc
import numpy as np
from detectron2.utils.visualizer import Visualizer

__all__ = ["SegmentationVisualizer", "contrast_ratio", "relative_luminance"]


def relative_luminance(rgb: Sequence[float]) -> float:
    """WCAG relative luminance of an RGB colour with channels in [0, 1]."""
    c = np.asarray(rgb, dtype=np.float64)[:3]
    linear = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio of two RGB colours (1: none, 21: black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


class SegmentationVisualizer(Visualizer):
    """``Visualizer`` with class names (and any other text) in black or white on an opaque
    box of the text's colour."""

    def draw_text(self, text, position, *, font_size=None, color="g",
                  horizontal_alignment="center", rotation=0):
        from matplotlib import patheffects

        if not font_size:
            font_size = self._default_font_size
        box = mplc.to_rgb(color)
        ink = (0.0, 0.0, 0.0) if contrast_ratio(box, (0, 0, 0)) >= contrast_ratio(
            box, (1, 1, 1)) else (1.0, 1.0, 1.0)
        x, y = position
        self.output.ax.text(
            x, y, text,
            size=font_size * self.output.scale,
            family="sans-serif",
            bbox={"facecolor": box, "alpha": 1.0, "pad": 0.7, "edgecolor": ink,
                  "linewidth": 0.8},
            verticalalignment="top",
            horizontalalignment=horizontal_alignment,
            color=ink,
            zorder=10,
            rotation=rotation,
            path_effects=[patheffects.withStroke(linewidth=0.6, foreground=box)],
        )
        return self.output
