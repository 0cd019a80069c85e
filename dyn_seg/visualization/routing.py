"""Figures of the routing space, in the style of the paper's route figure.

Layers run left to right (the init cell first, the decoder input last), scales 1/4 ... 1/32
top to bottom. Every cell is a node; every path is a line to the next layer: keep is
horizontal, up goes to the finer scale above, down to the coarser scale below. A line's
width is the share of images in which the path is active, its colour the mean gate
activation alpha; a path closed for every image is a thin dashed grey line.

Dropped cells are drawn in red: a cell dropped for every image is a hollow node with a red
ring and cross, a cell dropped for some images a node with a red ring and the share of
images printed under it. A dropped cell that received input hands it on unchanged to the
next layer at its scale: a red dotted line.

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
from matplotlib.colors import ListedColormap, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..modeling.routing.space import DOWN, UP
from .stats import CellKey, RoutingSpace, RoutingStats, collect_routing_stats

__all__ = [
    "RoutingStats", "collect_routing_stats", "draw_image_route", "draw_routing",
    "format_gflops", "min_route_width", "overlay_route", "render_route",
]

# viridis reversed (dark = strong activation) without its palest yellow, so that a weak
# path still shows on the white background
CMAP = ListedColormap(colormaps["viridis_r"](np.linspace(0.12, 1.0, 256)), "routing")
NORM = Normalize(0.0, 1.0)
CLOSED_COLOR = "#8c8c8c"
CLOSED_STYLE = (0, (3, 2))
NODE_COLOR = "#1f1f1f"
# red is absent from the path colour map, so dropped cells and handed-on inputs stand out
DROP_COLOR = "#d62728"
PASS_STYLE = (0, (1, 1.2))
MIN_WIDTH, MAX_WIDTH = 1.0, 6.0  # line widths in points for rates just above 0 and 1
NODE_SIZE = 80  # scatter marker area in points^2
DPI = 110
FONT = {"tick": 9, "label": 10, "legend": 9, "title": 11, "note": 8}


def _line_width(rate: float, scale: float = 1.0) -> float:
    return scale * (MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * rate)


def _target(layer: int, scale: int, path: str) -> Tuple[int, int]:
    """Position (x, y) where ``path`` of cell ``(layer, scale)`` ends (x = layer + 2)."""
    return layer + 2, scale + {UP: -1, DOWN: 1}.get(path, 0)


def _num_scales(stats: RoutingStats) -> int:
    return max(s.scale for s in stats.specs) + 1


def _draw_paths(ax: Axes, stats: RoutingStats, size: float) -> None:
    n = max(stats.num_images, 1)
    for spec in stats.specs:
        x0, y0 = spec.layer + 1, spec.scale
        for path in spec.paths:
            rate = stats.path_rate(spec.layer, spec.scale, path)
            x1, y1 = _target(spec.layer, spec.scale, path)
            if rate == 0.0:
                ax.plot([x0, x1], [y0, y1], color=CLOSED_COLOR, lw=size, ls=CLOSED_STYLE,
                        zorder=1)
                continue
            alpha = stats.path_mean_alpha(spec.layer, spec.scale, path)
            ax.plot([x0, x1], [y0, y1], color=CMAP(NORM(alpha)), lw=_line_width(rate, size),
                    zorder=2 + rate, solid_capstyle="round")
        passed = stats.passed_through(spec.layer, spec.scale) / n
        if passed:
            ax.plot([x0, spec.layer + 2], [y0, y0], color=DROP_COLOR, ls=PASS_STYLE,
                    lw=max(1.5, 0.5 * _line_width(passed)) * size, zorder=4)


def _draw_cells(ax: Axes, stats: RoutingStats, size: float, notes: bool) -> None:
    n = max(stats.num_images, 1)
    area = NODE_SIZE * size ** 2
    for spec in stats.specs:
        x, y = spec.layer + 1, spec.scale
        dropped = stats.dropped(spec.layer, spec.scale) / n
        if dropped == 0.0:
            ax.scatter([x], [y], s=area, facecolor=NODE_COLOR, edgecolor=NODE_COLOR,
                       linewidth=1.2 * size, zorder=5)
        elif dropped == 1.0:
            ax.scatter([x], [y], s=area, facecolor="white", edgecolor=DROP_COLOR,
                       linewidth=1.8 * size, zorder=5)
            ax.scatter([x], [y], s=0.45 * area, marker="x", color=DROP_COLOR,
                       linewidth=1.6 * size, zorder=6)
        else:
            # grey level = share of images for which the cell runs (black: every image)
            face = tuple(np.full(3, 1.0) * dropped + np.array(to_rgb(NODE_COLOR)) * (1 - dropped))
            ax.scatter([x], [y], s=area, facecolor=face, edgecolor=DROP_COLOR,
                       linewidth=2.0 * size, zorder=5)
            if notes:
                ax.annotate(f"{dropped:.0%}", (x, y), xytext=(0, -8), textcoords="offset points",
                            ha="center", va="top", fontsize=FONT["note"], color=DROP_COLOR,
                            fontweight="bold", zorder=7,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.9})
    # the last layer's features enter the decoder
    num_scales = _num_scales(stats)
    ax.scatter([stats.num_layers + 1] * num_scales, range(num_scales), s=0.8 * area,
               marker="s", facecolor="white", edgecolor=NODE_COLOR, linewidth=1.2 * size,
               zorder=5)


def _draw_space(ax: Axes, stats: RoutingStats, single_image: bool, *, size: float = 1.0,
                decorate: bool = True) -> None:
    """Draw nodes and paths of ``stats`` on ``ax`` (x: layer + 1, y: scale index).

    ``size`` scales line widths and markers; ``decorate`` adds ticks, axis labels and the
    dropped-share notes (off for thumbnails).
    """
    _draw_paths(ax, stats, size)
    _draw_cells(ax, stats, size, notes=decorate and not single_image)
    head_x, num_scales = stats.num_layers + 1, _num_scales(stats)
    ax.set_xlim(-0.5, head_x + 0.5)
    ax.set_ylim(num_scales - 0.5, -0.5)  # finest scale on top
    if not decorate:
        ax.set_axis_off()
        return
    ax.set_xticks(range(head_x + 1))
    ax.set_xticklabels(["init"] + [str(l) for l in range(stats.num_layers)] + ["head"],
                       fontsize=FONT["tick"])
    ax.set_yticks(range(num_scales))
    ax.set_yticklabels([f"1/{4 * 2 ** i}" for i in range(num_scales)], fontsize=FONT["tick"])
    ax.set_xlabel("layer", fontsize=FONT["label"])
    ax.set_ylabel("scale (feature stride)", fontsize=FONT["label"])
    ax.tick_params(length=3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(ax: Axes, single_image: bool) -> None:
    dark = CMAP(0.8)
    if single_image:
        lines = [Line2D([], [], color=dark, lw=_line_width(1.0), label="open path")]
    else:
        lines = [
            Line2D([], [], color=dark, lw=_line_width(r), label=f"active in {r:.0%} of images")
            for r in (1.0, 0.5, 0.1)
        ]
    lines += [
        Line2D([], [], color=CLOSED_COLOR, lw=1.0, ls=CLOSED_STYLE,
               label="closed path" + ("" if single_image else " (every image)")),
        Line2D([], [], color=DROP_COLOR, lw=2.0, ls=PASS_STYLE,
               label="input handed on by a dropped cell"),
        Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor=NODE_COLOR,
               markeredgecolor=NODE_COLOR, label="cell that runs"),
    ]
    if not single_image:
        lines.append(Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor="#8f8f8f",
                            markeredgecolor=DROP_COLOR, markeredgewidth=2.0,
                            label="cell dropped for some images (% of images)"))
    lines.append(Line2D([], [], ls="", marker="$\\otimes$", markersize=11,
                        color=DROP_COLOR,
                        label="cell dropped" + ("" if single_image else " for every image")))
    ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2 if single_image else 3, fontsize=FONT["legend"], frameon=False,
              handlelength=2.8, columnspacing=1.6)


def _colorbar(fig: Figure, ax: Axes, label: str) -> None:
    mappable = ScalarMappable(norm=NORM, cmap=CMAP)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.015, aspect=12)
    bar.set_label(label, fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"] - 1)


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
    return max(6.5, 0.55 * (num_layers + 2) + 1.5)


def draw_routing(stats: RoutingStats, path_png: str, title: Optional[str] = None) -> str:
    """Draw the routing space with the statistics of ``stats`` into ``path_png``.

    Line width: share of images in which a path is active; colour: its mean gate
    activation; dashed grey: closed in every image. Nodes: black, the cell runs for every
    image; red ring, dropped for some images (the share printed under it, the fill lighter
    the more often it is dropped); hollow with a red cross, dropped for every image. Red
    dotted: input handed on unchanged by a dropped cell. Returns ``path_png``.
    """
    fig = Figure(figsize=(_route_width(stats.num_layers), 3.8))
    ax = fig.add_subplot()
    _draw_space(ax, stats, single_image=False)
    _legend(ax, single_image=False)
    _colorbar(fig, ax, "mean gate activation α")
    ax.set_title(title if title is not None else _default_title(stats), fontsize=FONT["title"])
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
    image = _check_image(image_bgr)
    stats = collect_routing_stats([{"routing": alphas}], routing_space)
    height = 3.8
    image_width = min(height * image.shape[1] / image.shape[0], 9.0)
    route_width = _route_width(stats.num_layers)
    fig = Figure(figsize=(image_width + route_width, height))
    grid = fig.add_gridspec(1, 2, width_ratios=[image_width, route_width], wspace=0.15)
    ax_image = fig.add_subplot(grid[0, 0])
    ax_image.imshow(image[..., ::-1])
    ax_image.set_axis_off()
    ax_route = fig.add_subplot(grid[0, 1])
    _draw_space(ax_route, stats, single_image=True)
    _legend(ax_route, single_image=True)
    _colorbar(fig, ax_route, "gate activation α")
    if title:
        fig.suptitle(title, fontsize=FONT["title"])
    _save(fig, path_png)
    return path_png


#: Thumbnail size rules: at least MIN_ROUTE_WIDTH pixels wide and MIN_LAYER_PIXELS per
#: layer column, so that paths, nodes and the axis labels stay legible.
MIN_ROUTE_WIDTH = 144
MIN_LAYER_PIXELS = 12
_LABEL_LEFT, _LABEL_RIGHT, _LABEL_BOTTOM = 1.3, 0.4, 0.75  # label margins (layer / scale steps)


def min_route_width(routing_space: RoutingSpace) -> int:
    """The narrowest legible route thumbnail (pixels) of a routing space."""
    init_spec, cell_specs = routing_space
    return max(MIN_ROUTE_WIDTH, MIN_LAYER_PIXELS * (len(cell_specs) + 3))


def _label_route(ax: Axes, stats: RoutingStats, font_px: float, dpi: float) -> None:
    """Scale labels (1/4 ... 1/32) on the left and layer labels (init, 0, 1, ..., head)
    along the bottom, spaced so that they never overlap."""
    size = font_px * 72.0 / dpi
    head_x, num_scales = stats.num_layers + 1, _num_scales(stats)
    style = {"fontsize": size, "color": "#333333", "clip_on": False}
    for s in range(num_scales):
        ax.text(-0.55, s, f"1/{4 * 2 ** s}", ha="right", va="center", **style)
    y = num_scales - 0.5 + 0.5 * _LABEL_BOTTOM
    column_px = ax.figure.get_figwidth() * dpi / (head_x + 1.0 + _LABEL_LEFT + _LABEL_RIGHT)
    step = max(1, int(np.ceil(2.4 * font_px / column_px)))  # two digits and a gap
    ax.text(0, y, "init", ha="center", va="center", **style)
    ax.text(head_x, y, "head", ha="center", va="center", **style)
    for layer in range(step - 1, stats.num_layers, step):
        if 2.2 * font_px < min(layer + 1, head_x - layer - 1) * column_px:  # clear of init/head
            ax.text(layer + 1, y, str(layer), ha="center", va="center", **style)


def render_route(
    alphas: Mapping[CellKey, object], *, routing_space: RoutingSpace, width: int,
    labels: bool = True,
) -> np.ndarray:
    """One image's route as a small RGB picture, e.g. for a corner of a demo overlay.

    Drawn like :func:`draw_image_route`'s route (open paths coloured by their gate
    activation, closed ones dashed grey, dropped cells in red) without legend or colour
    bar, on a white background; with ``labels`` the scales (1/4 ... 1/32) are named on the
    left and the layers (init, 0, 1, ..., head) along the bottom.

    Args:
        alphas: the image's ``"routing"`` output, {(layer, scale): (num_paths,) activations}.
        routing_space: ``(init_spec, cell_specs)`` of the model.
        width: width of the picture in pixels (>= 16); the height follows from the number
            of layers and scales (about 2.8 layers per scale height).
        labels: write the axis labels (see :func:`min_route_width` for a legible width).

    Returns an (h, width, 3) uint8 RGB array.
    """
    if width < 16:
        raise ValueError(f"render_route needs a width of at least 16 pixels, got {width}.")
    stats = collect_routing_stats([{"routing": alphas}], routing_space)
    # one layer step and one scale step each take about 0.45 inch, so diagonals look square
    left, right, bottom = (_LABEL_LEFT, _LABEL_RIGHT, _LABEL_BOTTOM) if labels else (0, 0, 0)
    fig_w = 0.45 * (stats.num_layers + 3 + left + right)
    fig_h = 0.45 * (_num_scales(stats) + 0.2 + bottom)
    dpi = width / fig_w
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    _draw_space(ax, stats, single_image=True, size=0.7, decorate=False)
    if labels:
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        ax.set_xlim(x0 - left, x1 + right)
        ax.set_ylim(y0 + bottom, y1)
        column_px = width / (stats.num_layers + 3 + left + right)
        _label_route(ax, stats, font_px=float(np.clip(0.55 * column_px, 7.0, 11.0)), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    height = max(1, round(fig_h * dpi))
    if rgb.shape[:2] != (height, width):  # Agg rounds the pixel size down: pad the edge
        padded = np.full((height, width, 3), 255, np.uint8)
        h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
        padded[:h, :w] = rgb[:h, :w]
        rgb = padded
    return np.ascontiguousarray(rgb)


def _check_image(image_bgr: np.ndarray) -> np.ndarray:
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"draw_image_route expects an (H, W, 3) BGR image, got shape {image.shape}; "
            "convert grayscale or RGBA images to 3 channels first."
        )
    return image


def overlay_route(
    image_rgb: np.ndarray,
    alphas: Mapping[CellKey, object],
    *,
    routing_space: RoutingSpace,
    fraction: float = 0.35,
    margin: int = 4,
) -> np.ndarray:
    """A copy of ``image_rgb`` with the image's route drawn in its bottom-right corner.

    The thumbnail (:func:`render_route` with axis labels, framed by a 1-pixel dark border)
    is ``fraction`` of the image width wide, but never narrower than
    :func:`min_route_width` (legible nodes, paths and labels). When it does not fit inside
    the image, it is drawn in a white band added below the image (and the band is wider
    than the image if need be): the result is then larger than ``image_rgb``, whose pixels
    stay unchanged in its top-left corner.

    Args:
        image_rgb: (H, W, 3) uint8 image, e.g. a segmentation overlay.
        alphas: the image's ``"routing"`` output, {(layer, scale): (num_paths,) activations}.
        routing_space: ``(init_spec, cell_specs)`` of the model.
        fraction: thumbnail width as a share of the image width, in (0, 1].
        margin: pixels between the frame and the image's (or band's) right and bottom edges.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"overlay_route: fraction must be in (0, 1], got {fraction}.")
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay_route expects an (H, W, 3) image, got shape {image.shape}.")
    height, width = image.shape[:2]
    thumb_w = max(round(fraction * width), min_route_width(routing_space))
    thumb = render_route(alphas, routing_space=routing_space, width=thumb_w)
    th, tw = thumb.shape[:2]
    need_h, need_w = th + 2 * margin + 2, tw + 2 * margin + 2  # thumbnail, frame, margins
    if need_h <= height and need_w <= width:
        out = image.copy()
    else:  # too small for a legible route: put it in a band below the image
        out = np.full((height + need_h, max(width, need_w), 3), 255, np.uint8)
        out[:height, :width] = image
    y1, x1 = out.shape[0] - margin - 1, out.shape[1] - margin - 1  # inner bottom-right
    y0, x0 = y1 - th, x1 - tw
    out[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = np.array(to_rgb(NODE_COLOR)) * 255
    out[y0:y1, x0:x1] = thumb
    return out
