"""Figures of the routing space, in the style of the paper's route figure.

Layers run left to right (the init cell first, the decoder input last), scales 1/4 ... 1/32
top to bottom. Every cell is a node; every path is a line to the next layer: keep is
horizontal, up goes to the finer scale above, down to the coarser scale below. A line's
width is the share of images in which the path is active, its colour the mean gate
activation alpha; a path closed for every image is a thin dashed grey line, and a cell
dropped for every image a hollow grey node. A dropped cell that received input hands it on
unchanged to the next layer at its scale: a dotted line.

Only matplotlib's object-oriented API is used (``Figure`` + Agg canvas), so drawing never
touches pyplot's global state or needs a display.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..modeling.routing_space import DOWN, UP
from .stats import CellKey, RoutingSpace, RoutingStats, collect_routing_stats

__all__ = [
    "RoutingStats", "collect_routing_stats", "draw_image_route", "draw_routing", "format_gflops"
]

# viridis reversed (dark = strong activation) without its palest yellow, so that a weak
# path still shows on the white background
CMAP = ListedColormap(colormaps["viridis_r"](np.linspace(0.12, 1.0, 256)), "routing")
CLOSED_COLOR = "#9a9a9a"
NODE_COLOR = "#262626"
PASS_COLOR = "#4d4d4d"
PASS_STYLE = (0, (1, 1.5))
MIN_WIDTH, MAX_WIDTH = 1.0, 6.0  # line widths in points for rates just above 0 and 1
DPI = 110


def _line_width(rate: float) -> float:
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * rate


def _target(layer: int, scale: int, path: str) -> Tuple[int, int]:
    """Position (x, y) where ``path`` of cell ``(layer, scale)`` ends (x = layer + 2)."""
    return layer + 2, scale + {UP: -1, DOWN: 1}.get(path, 0)


def _draw_space(ax: Axes, stats: RoutingStats, cmap, norm: Normalize, single_image: bool
                ) -> None:
    """Draw nodes and paths of ``stats`` on ``ax`` (x: layer + 1, y: scale index)."""
    num_layers = stats.num_layers
    num_scales = max(s.scale for s in stats.specs) + 1
    n = max(stats.num_images, 1)
    head_x = num_layers + 1
    for spec in stats.specs:
        x0, y0 = spec.layer + 1, spec.scale
        for path in spec.paths:
            rate = stats.path_rate(spec.layer, spec.scale, path)
            x1, y1 = _target(spec.layer, spec.scale, path)
            if rate == 0.0:
                ax.plot([x0, x1], [y0, y1], color=CLOSED_COLOR, lw=0.8, ls=(0, (3, 2)),
                        zorder=1, solid_capstyle="round")
                continue
            alpha = stats.path_mean_alpha(spec.layer, spec.scale, path)
            ax.plot([x0, x1], [y0, y1], color=cmap(norm(alpha)), lw=_line_width(rate),
                    zorder=2 + rate, solid_capstyle="round")
        passed = stats.passed_through(spec.layer, spec.scale) / n
        if passed:
            ax.plot([x0, spec.layer + 2], [y0, y0], color=PASS_COLOR, ls=PASS_STYLE,
                    lw=0.6 * _line_width(passed), zorder=4)
    for spec in stats.specs:
        x, y = spec.layer + 1, spec.scale
        dropped = stats.dropped(spec.layer, spec.scale)
        runs = 1.0 - dropped / n
        if runs == 0.0:
            ax.scatter([x], [y], s=70, facecolor="white", edgecolor=CLOSED_COLOR,
                       linewidth=1.5, zorder=5)
            continue
        # grey level = share of images for which the cell runs (black: every image)
        face = tuple(np.array([1.0, 1.0, 1.0]) * (1 - runs) + np.array([0.15] * 3) * runs)
        ax.scatter([x], [y], s=70, facecolor=face, edgecolor=NODE_COLOR, linewidth=1.2,
                   zorder=5)
        if dropped and not single_image:
            ax.annotate(f"{dropped / n:.0%}", (x, y), xytext=(0, -10),
                        textcoords="offset points", ha="center", va="top", fontsize=6.5,
                        color="#444444", zorder=6,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                              "alpha": 0.85})
    # the last layer's features enter the decoder
    ax.scatter([head_x] * num_scales, range(num_scales), s=55, marker="s",
               facecolor="white", edgecolor=NODE_COLOR, linewidth=1.2, zorder=5)

    ax.set_xlim(-0.6, head_x + 0.6)
    ax.set_ylim(num_scales - 0.5, -0.6)  # finest scale on top
    ax.set_xticks(range(head_x + 1))
    ax.set_xticklabels(["init"] + [str(l) for l in range(num_layers)] + ["head"],
                       fontsize=8)
    ax.set_yticks(range(num_scales))
    ax.set_yticklabels([f"1/{4 * 2 ** i}" for i in range(num_scales)], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"scale (1/4 ... 1/{4 * 2 ** (num_scales - 1)})")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(ax: Axes, cmap, single_image: bool) -> None:
    dark = cmap(0.8)
    if single_image:
        lines = [Line2D([], [], color=dark, lw=_line_width(1.0), label="open path")]
    else:
        lines = [
            Line2D([], [], color=dark, lw=_line_width(r), label=f"active in {r:.0%} of images")
            for r in (1.0, 0.5, 0.1)
        ]
    lines += [
        Line2D([], [], color=CLOSED_COLOR, lw=0.8, ls=(0, (3, 2)),
               label="closed" + ("" if single_image else " in every image")),
        Line2D([], [], color=PASS_COLOR, lw=0.6 * _line_width(1.0), ls=PASS_STYLE,
               label="input handed on by a dropped cell"),
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor=NODE_COLOR,
               markeredgecolor=NODE_COLOR,
               label="cell" if single_image else "cell (grey, %: dropped for that share)"),
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="white",
               markeredgecolor=CLOSED_COLOR, markeredgewidth=1.5,
               label="dropped cell" if single_image else "cell dropped for every image"),
    ]
    ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=3, fontsize=8, frameon=False,
              handlelength=2.5, columnspacing=1.5)


def _colorbar(fig: Figure, ax: Axes, cmap, norm: Normalize, label: str) -> None:
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.015, aspect=12)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _save(fig: Figure, path_png: str) -> None:
    folder = os.path.dirname(os.path.abspath(path_png))
    os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path_png, dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def format_gflops(value: float) -> str:
    """GFLOPs with two decimals, or three significant digits below 1 (tiny test models)."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _default_title(stats: RoutingStats) -> str:
    title = f"Routing over {stats.num_images} image{'s' if stats.num_images != 1 else ''}"
    flops = stats.gflops_summary()
    if flops:
        title += (f": real {format_gflops(flops['real']['mean'])} GFLOPs, expected "
                  f"{format_gflops(flops['expected']['mean'])} GFLOPs (mean)")
    return title


def _route_width(num_layers: int) -> float:
    return max(6.0, 0.5 * (num_layers + 2) + 1.5)


def draw_routing(stats: RoutingStats, path_png: str, title: Optional[str] = None) -> str:
    """Draw the routing space with the statistics of ``stats`` into ``path_png``.

    Line width: share of images in which a path is active; colour: its mean gate
    activation; dashed grey: closed in every image; node grey level: share of images for
    which the cell runs (hollow grey: dropped for every image, with the share of images
    dropped printed under partly dropped cells). Returns ``path_png``.
    """
    cmap, norm = CMAP, Normalize(0.0, 1.0)
    fig = Figure(figsize=(_route_width(stats.num_layers), 3.6))
    ax = fig.add_subplot()
    _draw_space(ax, stats, cmap, norm, single_image=False)
    _legend(ax, cmap, single_image=False)
    _colorbar(fig, ax, cmap, norm, "mean gate activation α")
    ax.set_title(title if title is not None else _default_title(stats), fontsize=10)
    _save(fig, path_png)
    return path_png


def draw_image_route(
    image_bgr: np.ndarray,
    alphas: Mapping[CellKey, object],
    path_png: str,
    *,
    routing_space: RoutingSpace,
    title: Optional[str] = None,
) -> str:
    """Draw one image (left) and its route through the routing space (right).

    Args:
        image_bgr: (H, W, 3) uint8 image in BGR order (as read by OpenCV / detectron2).
        alphas: that image's ``"routing"`` output, {(layer, scale): (num_paths,)
            activations in the cell's path order}.
        path_png: where to write the PNG (folders are created).
        routing_space: ``(init_spec, cell_specs)`` of the model, which says which path
            each activation belongs to.
        title: figure title (default: none).

    Returns ``path_png``.
    """
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"draw_image_route expects an (H, W, 3) BGR image, got shape {image.shape}; "
            "convert grayscale or RGBA images to 3 channels first."
        )
    stats = collect_routing_stats([{"routing": alphas}], routing_space)
    cmap, norm = CMAP, Normalize(0.0, 1.0)
    height = 3.6
    image_width = min(height * image.shape[1] / image.shape[0], 9.0)
    route_width = _route_width(stats.num_layers)
    fig = Figure(figsize=(image_width + route_width, height))
    grid = fig.add_gridspec(1, 2, width_ratios=[image_width, route_width], wspace=0.2)
    ax_image = fig.add_subplot(grid[0, 0])
    ax_image.imshow(image[..., ::-1])
    ax_image.set_axis_off()
    ax_route = fig.add_subplot(grid[0, 1])
    _draw_space(ax_route, stats, cmap, norm, single_image=True)
    _legend(ax_route, cmap, single_image=True)
    _colorbar(fig, ax_route, cmap, norm, "gate activation α")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path_png)
    return path_png
