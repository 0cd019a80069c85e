"""A small synthetic street-scene dataset in the exact Cityscapes file layout.

The real Cityscapes dataset needs a login to download. This module draws simple,
perspective-consistent street scenes (sky, buildings with windows, road with lane markings,
sidewalks, terrain, trees, poles with traffic signs and lights, cars, pedestrians and cyclists
(a rider on a bicycle)) and
writes them the way Cityscapes ships them, so that detectron2's builtin
``cityscapes_fine_sem_seg_{train,val}`` datasets and the Cityscapes evaluator read them
unchanged::

    ROOT/cityscapes/leftImg8bit/{train,val}/CITY/CITY_000000_NNNNNN_leftImg8bit.png
    ROOT/cityscapes/gtFine/{train,val}/CITY/CITY_000000_NNNNNN_gtFine_labelIds.png
                                            ..._gtFine_labelTrainIds.png
                                            ..._gtFine_instanceIds.png
                                            ..._gtFine_color.png
                                            ..._gtFine_polygons.json
    ROOT/cityscapes/gtFine/cityscapes_panoptic_{train,val}.json   (+ the PNG folders)

Every object of a thing class (car, person, rider, bicycle) is its own instance: its pixels
in ``instanceIds`` are ``labelId * 1000 + k`` and it is one polygon in ``polygons.json``.
The panoptic files are made from the instance ids by cityscapesscripts'
``createPanopticImgs`` (:mod:`dyn_seg.data.panoptic`), so that detectron2's builtin
``cityscapes_fine_panoptic_{train,val}`` and ``cityscapes_fine_instance_seg_{train,val}``
datasets read the generated data as well.

Every scene is described as a list of labelled polygons drawn in order (later polygons cover
earlier ones, as in Cityscapes' own annotations). The label images are rasterised from those
polygons with the same PIL drawing call that cityscapesscripts' ``json2labelImg`` uses, so
running ``createTrainIdLabelImgs`` on the generated data reproduces the shipped
``labelTrainIds`` files. Each class has its own colour distribution plus texture and noise,
so a small network learns the scenes within a few hundred iterations.

Point detectron2 at the data with ``export DETECTRON2_DATASETS=ROOT`` *before* importing
``detectron2.data`` (its builtin datasets read the variable once, at import).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "SPLIT_CITIES",
    "SYNTHETIC_CLASSES",
    "generate_synthetic_cityscapes",
    "render_scene",
]

#: Bumped whenever the drawn scenes change, so that stale data is regenerated.
GENERATOR_VERSION = 2
#: Written last into ``ROOT/cityscapes``; its presence marks a complete generation.
MARKER_NAME = ".synthetic_cityscapes.json"
#: Two made-up cities per split (Cityscapes file names forbid ``_`` in city names).
SPLIT_CITIES: Dict[str, Tuple[str, str]] = {
    "train": ("synthtown", "fakeburg"),
    "val": ("mockdorf", "pixelstadt"),
}
#: The Cityscapes classes (by label name) that appear in the generated scenes.
SYNTHETIC_CLASSES: Tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "bicycle",
)

_SPLIT_CODES = {"train": 0, "val": 1}
Point = Tuple[int, int]


@dataclass
class _Shape:
    """One annotated polygon of a scene, with what is needed to paint it."""

    label: str
    polygon: List[Point]
    color: Tuple[float, float, float]
    texture: str = "plain"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class _Road:
    """Geometry of the road trapezoid, used to place objects on the road or beside it."""

    horizon: int
    bottom: int
    top_left: float
    top_right: float
    bottom_left: float
    bottom_right: float
    width_m: float

    def edges(self, y: Any) -> Tuple[Any, Any]:
        """Return the road's left and right x at row(s) ``y`` (a number or an array)."""
        t = (y - self.horizon) / max(self.bottom - self.horizon, 1)
        left = self.top_left + (self.bottom_left - self.top_left) * t
        right = self.top_right + (self.bottom_right - self.top_right) * t
        return left, right

    def pixels_per_meter(self, y: Any) -> Any:
        """Scale of the scene at row(s) ``y`` (zero at the horizon)."""
        left, right = self.edges(y)
        return np.maximum(right - left, 0.0) / self.width_m


def _jitter(rng: np.random.Generator, base: Sequence[float], amount: float) -> Tuple[float, ...]:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in base)


def _clip_polygon(poly: Sequence[Tuple[float, float]], width: int, height: int) -> List[Point]:
    """Round a polygon to integer pixels inside the image (Cityscapes stores integers)."""
    return [
        (int(np.clip(round(x), 0, width - 1)), int(np.clip(round(y), 0, height - 1)))
        for x, y in poly
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> List[Tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _blob(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 14
) -> List[Tuple[float, float]]:
    """A star-shaped (hence simple) polygon around an ellipse, with a jittered radius."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
    radii = rng.uniform(0.75, 1.15, size=n)
    return [
        (cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radii)
    ]


# Base colours (RGB) of each class; every object jitters its own colour around these.
_SKY = (135.0, 185.0, 235.0)
_BUILDINGS = ((150.0, 128.0, 108.0), (122.0, 116.0, 110.0), (172.0, 150.0, 128.0),
              (112.0, 98.0, 92.0))
_ROAD = (95.0, 90.0, 102.0)
_SIDEWALK = (188.0, 150.0, 166.0)
_TERRAIN = (152.0, 176.0, 84.0)
_VEGETATION = (52.0, 116.0, 38.0)
_POLE = (205.0, 205.0, 215.0)
_SIGN = (232.0, 200.0, 22.0)
_LIGHT_HOUSING = (38.0, 36.0, 30.0)
_SHIRTS = ((200.0, 40.0, 62.0), (232.0, 120.0, 30.0), (150.0, 52.0, 162.0))
_CARS = ((32.0, 44.0, 165.0), (22.0, 24.0, 104.0), (40.0, 90.0, 170.0))
_RIDER_JACKETS = ((236.0, 226.0, 40.0), (40.0, 196.0, 200.0))
_BICYCLE = (150.0, 20.0, 52.0)
_EGO = (40.0, 40.0, 46.0)


def _make_scene(rng: np.random.Generator, height: int, width: int) -> List[_Shape]:
    """Draw the random layout of one street scene as an ordered list of shapes."""
    H, W = height, width
    shapes: List[_Shape] = []
    horizon = int(round(H * rng.uniform(0.38, 0.5)))
    bottom = H - 1
    vx = W * rng.uniform(0.4, 0.6)
    road = _Road(
        horizon=horizon,
        bottom=bottom,
        top_left=vx - W * rng.uniform(0.015, 0.04),
        top_right=vx + W * rng.uniform(0.015, 0.04),
        bottom_left=W * rng.uniform(0.04, 0.22),
        bottom_right=W * rng.uniform(0.78, 0.96),
        width_m=8.0,
    )

    # Sky above the horizon, sidewalk as the whole ground plane (the road covers its middle).
    shapes.append(_Shape("sky", _rect(0, 0, W - 1, horizon), _jitter(rng, _SKY, 15), "sky",
                         {"horizon": horizon}))
    shapes.append(_Shape("sidewalk", _rect(0, horizon, W - 1, H - 1),
                         _jitter(rng, _SIDEWALK, 10)))

    # Grass wedges at the outer edges of the sidewalks.
    for side in (-1, 1):
        if rng.random() < 0.6:
            depth = horizon + (H - horizon) * rng.uniform(0.25, 0.55)
            reach = W * rng.uniform(0.12, 0.3)
            if side < 0:
                poly = [(0, horizon), (reach, horizon), (0, depth)]
            else:
                poly = [(W - 1, horizon), (W - 1 - reach, horizon), (W - 1, depth)]
            shapes.append(_Shape("terrain", poly, _jitter(rng, _TERRAIN, 12)))

    shapes.append(_Shape(
        "road",
        [(road.top_left, horizon), (road.top_right, horizon),
         (road.bottom_right, bottom), (road.bottom_left, bottom)],
        _jitter(rng, _ROAD, 8),
        "road",
        {"road": road, "dash": rng.uniform(2.0, 3.5)},
    ))

    # Buildings along both sides, leaving a gap around the vanishing point.
    gap = W * rng.uniform(0.04, 0.1)
    for x_start, x_end in ((0.0, vx - gap), (vx + gap, float(W - 1))):
        x = x_start
        while x < x_end - 3:
            w = min(W * rng.uniform(0.08, 0.22), x_end - x)
            if rng.random() > 0.15:
                top = H * rng.uniform(0.02, 0.28)
                top = min(top, horizon - H * 0.08)
                base = horizon + H * rng.uniform(0.0, 0.03)
                shapes.append(_Shape(
                    "building",
                    _rect(x, top, x + w, base),
                    _jitter(rng, _BUILDINGS[rng.integers(len(_BUILDINGS))], 12),
                    "building",
                    {
                        "origin": (x, top),
                        "step": (rng.uniform(6, 12), rng.uniform(7, 13)),
                        "size": (rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)),
                        "lit": bool(rng.random() < 0.3),
                    },
                ))
            x += w

    # Trees in front of the buildings.
    for _ in range(int(rng.integers(1, 4))):
        cx = W * rng.uniform(0.0, 1.0)
        cy = horizon - H * rng.uniform(0.0, 0.15)
        rx, ry = W * rng.uniform(0.04, 0.1), H * rng.uniform(0.08, 0.18)
        shapes.append(_Shape("vegetation", _blob(rng, cx, cy, rx, ry),
                             _jitter(rng, _VEGETATION, 12), "leaves",
                             {"phase": tuple(rng.uniform(0, 2 * np.pi, size=2)),
                              "freq": tuple(rng.uniform(0.5, 1.1, size=2))}))

    def sidewalk_x(y: float, half_width: float) -> Optional[float]:
        """A random x centre on either sidewalk at row ``y``, or None if there is no room."""
        left, right = road.edges(y)
        sides = []
        if left - 2 * half_width - 2 > 1:
            sides.append((1 + half_width, left - half_width - 1))
        if right + 2 * half_width + 2 < W - 2:
            sides.append((right + half_width + 1, W - 2 - half_width))
        if not sides:
            return None
        lo, hi = sides[int(rng.integers(len(sides)))]
        return float(rng.uniform(lo, hi))

    # Objects are placed by the row of their base and sized by the perspective scale there;
    # far ones are drawn first so that near ones cover them.
    objects: List[Tuple[float, str]] = []
    for kind, count in (("pole", rng.integers(1, 4)), ("car", rng.integers(0, 5)),
                        ("person", rng.integers(0, 5)), ("rider", rng.integers(0, 3))):
        for _ in range(int(count)):
            low = 0.25 if kind != "pole" else 0.35
            objects.append((horizon + (H - 1 - horizon) * rng.uniform(low, 0.97), kind))
    objects.sort(key=lambda item: item[0])

    for y_base, kind in objects:
        ppm = road.pixels_per_meter(y_base)
        if kind == "car":
            w, h = 1.8 * ppm, 1.5 * ppm
            left, right = road.edges(y_base)
            if right - left < w + 2:
                continue
            x0 = float(rng.uniform(left + 1, right - w - 1))
            x1, body = x0 + w, y_base - 0.55 * h
            top = y_base - h
            shapes.append(_Shape(
                "car",
                [(x0, y_base), (x0, body), (x0 + 0.12 * w, body), (x0 + 0.25 * w, top),
                 (x1 - 0.25 * w, top), (x1 - 0.12 * w, body), (x1, body), (x1, y_base)],
                _jitter(rng, _CARS[rng.integers(len(_CARS))], 18),
                "car",
                {"box": (x0, top, x1, y_base)},
            ))
        elif kind == "person":
            h, w = 1.75 * ppm * rng.uniform(0.9, 1.1), 0.5 * ppm
            cx = sidewalk_x(y_base, w / 2)
            if cx is None or h < 5:
                continue
            x0, x1, top = cx - w / 2, cx + w / 2, y_base - h
            neck = top + 0.2 * h
            shapes.append(_Shape(
                "person",
                [(x0, y_base), (x0, neck), (cx - w / 4, neck), (cx - w / 4, top),
                 (cx + w / 4, top), (cx + w / 4, neck), (x1, neck), (x1, y_base)],
                _jitter(rng, _SHIRTS[rng.integers(len(_SHIRTS))], 15),
                "person",
                {"box": (x0, top, x1, y_base)},
            ))
        elif kind == "rider":
            # a cyclist near the kerb: the bicycle, then its rider drawn over its top
            w, h = 1.7 * ppm, 1.0 * ppm
            left, right = road.edges(y_base)
            if right - left < 2 * w + 4 or h < 4:
                continue
            x0 = float(left + 1 if rng.random() < 0.5 else right - w - 1)
            x1, top = x0 + w, y_base - h
            shapes.append(_Shape(
                "bicycle",
                [(x0, y_base), (x0, y_base - 0.7 * h), (x0 + 0.35 * w, top),
                 (x1 - 0.35 * w, top), (x1, y_base - 0.7 * h), (x1, y_base)],
                _jitter(rng, _BICYCLE, 15),
                "bicycle",
                {"box": (x0, top, x1, y_base)},
            ))
            cx, rw, rh = (x0 + x1) / 2, 0.45 * ppm, 1.3 * ppm
            r_base, r_top = y_base - 0.55 * h, y_base - 0.55 * h - rh
            neck = r_top + 0.25 * rh
            shapes.append(_Shape(
                "rider",
                [(cx - rw / 2, r_base), (cx - rw / 2, neck), (cx - rw / 4, neck),
                 (cx - rw / 4, r_top), (cx + rw / 4, r_top), (cx + rw / 4, neck),
                 (cx + rw / 2, neck), (cx + rw / 2, r_base)],
                _jitter(rng, _RIDER_JACKETS[rng.integers(len(_RIDER_JACKETS))], 15),
                "person",
                {"box": (cx - rw / 2, r_top, cx + rw / 2, r_base)},
            ))
        else:
            w = max(0.15 * ppm, 2.0)
            cx = sidewalk_x(y_base, w / 2)
            if cx is None:
                continue
            top = max(y_base - rng.uniform(5.0, 7.0) * ppm, 0.0)
            shapes.append(_Shape("pole", _rect(cx - w / 2, top, cx + w / 2, y_base),
                                 _jitter(rng, _POLE, 10)))
            attach = rng.random()
            if attach < 0.5:
                s = max(0.7 * ppm, 4.0)
                sy = top + 0.1 * s
                if rng.random() < 0.5:
                    poly = _rect(cx - s / 2, sy, cx + s / 2, sy + s)
                else:
                    poly = [(cx, sy), (cx + s / 2, sy + s / 2), (cx, sy + s),
                            (cx - s / 2, sy + s / 2)]
                shapes.append(_Shape("traffic sign", poly, _jitter(rng, _SIGN, 15)))
            elif attach < 0.8:
                lw, lh = max(0.35 * ppm, 3.0), max(0.9 * ppm, 7.0)
                box = (cx - lw / 2, top, cx + lw / 2, top + lh)
                shapes.append(_Shape("traffic light", _rect(*box),
                                     _jitter(rng, _LIGHT_HOUSING, 8), "light",
                                     {"box": box, "green": bool(rng.random() < 0.5)}))

    # Ignored regions: sometimes the ego vehicle's bonnet, and black rectification borders.
    if rng.random() < 0.4:
        e2 = H * rng.uniform(0.04, 0.08)
        e1 = 0.4 * e2
        shapes.append(_Shape(
            "ego vehicle",
            [(0, H - 1), (0, H - 1 - e1), (0.3 * W, H - 1 - e2), (0.7 * W, H - 1 - e2),
             (W - 1, H - 1 - e1), (W - 1, H - 1)],
            _jitter(rng, _EGO, 5),
        ))
    for side in (0, 1):
        bw = int(rng.integers(0, 4))
        if bw:
            x0 = 0 if side == 0 else W - bw
            shapes.append(_Shape("rectification border", _rect(x0, 0, x0 + bw - 1, H - 1),
                                 (0.0, 0.0, 0.0)))

    for shape in shapes:
        shape.polygon = _clip_polygon(shape.polygon, W, H)
    return shapes


def _paint(shape: _Shape, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Colours (N, 3) of the pixels at rows ``ys`` and columns ``xs`` of ``shape``."""
    color = np.asarray(shape.color, dtype=np.float64)
    out = np.broadcast_to(color, (len(ys), 3)).copy()
    p = shape.params
    if shape.texture == "sky":
        horizon = max(float(p["horizon"]), 1.0)
        out *= (0.85 + 0.25 * ys / horizon)[:, None]
    elif shape.texture == "road":
        road: _Road = p["road"]
        left, right = road.edges(ys)
        centre = (left + right) / 2
        half = np.maximum(road.pixels_per_meter(ys) * 0.08, 0.5)
        depth = np.log1p(np.maximum(ys - road.horizon, 0)) * float(p["dash"])
        on_line = (np.abs(xs - centre) <= half) & (np.floor(depth) % 2 == 0)
        out[on_line] = (226.0, 226.0, 220.0)
    elif shape.texture == "building":
        ox, oy = p["origin"]
        sx, sy = p["step"]
        fx, fy = p["size"]
        u, v = (xs - ox) / sx, (ys - oy) / sy
        window = (u % 1 > 1 - fx) & (v % 1 > 1 - fy) & (u > 1) & (v > 1)
        out[window] = (212.0, 200.0, 140.0) if p["lit"] else (56.0, 66.0, 86.0)
    elif shape.texture == "leaves":
        (ph1, ph2), (f1, f2) = p["phase"], p["freq"]
        pattern = np.sin(xs * f1 + ph1) * np.sin(ys * f2 + ph2)
        out *= (1.0 + 0.3 * pattern)[:, None]
    elif shape.texture == "car":
        x0, top, x1, base = p["box"]
        h, w = max(base - top, 1.0), max(x1 - x0, 1.0)
        rel_y = (ys - top) / h
        out[rel_y < 0.42] = (150.0, 170.0, 196.0)
        radius = 0.16 * h
        for wx in (x0 + 0.22 * w, x1 - 0.22 * w):
            wheel = (xs - wx) ** 2 + (ys - (base - radius)) ** 2 <= radius**2
            out[wheel] = (24.0, 24.0, 24.0)
    elif shape.texture == "person":
        _, top, _, base = p["box"]
        rel_y = (ys - top) / max(base - top, 1.0)
        out[rel_y < 0.2] = (226.0, 182.0, 150.0)
        out[rel_y > 0.6] = (48.0, 50.0, 72.0)
    elif shape.texture == "bicycle":
        x0, top, x1, base = p["box"]
        h, w = max(base - top, 1.0), max(x1 - x0, 1.0)
        radius = 0.35 * h
        for wx in (x0 + radius, x1 - radius):
            ring = np.abs(np.hypot(xs - wx, ys - (base - radius)) - 0.8 * radius) <= 0.25 * radius
            out[ring] = (20.0, 20.0, 20.0)
    elif shape.texture == "light":
        x0, top, x1, bottom = p["box"]
        cx, r = (x0 + x1) / 2, max((x1 - x0) * 0.35, 1.0)
        cy = top + (bottom - top) * (0.75 if p["green"] else 0.25)
        lamp = (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
        out[lamp] = (40.0, 222.0, 84.0) if p["green"] else (232.0, 40.0, 30.0)
    return out


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Draw one random street scene.

    Args:
        rng: the random generator that decides everything about the scene.
        height, width: the image size in pixels.

    Returns:
        ``(image, label_ids, instance_ids, polygons)``: an RGB ``uint8`` image (H, W, 3),
        the Cityscapes label ids (``uint8``, H x W), the Cityscapes instance ids (``uint16``:
        ``id * 1000 + k`` for objects of thing classes, the label id elsewhere) and the
        ``gtFine_polygons.json`` content.
    """
    from cityscapesscripts.helpers.labels import name2label

    shapes = _make_scene(rng, height, width)
    # Rasterise the shape index with the same PIL call as cityscapesscripts' json2labelImg,
    # so that a label drawn from the JSON equals the one derived from this index map.
    index_img = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(index_img)
    for k, shape in enumerate(shapes):
        draw.polygon(shape.polygon, fill=k + 1)
    index = np.asarray(index_img, dtype=np.int64)

    label_lut = np.zeros(len(shapes) + 1, dtype=np.uint8)  # 0: "unlabeled"
    inst_lut = np.zeros(len(shapes) + 1, dtype=np.uint16)
    counters: Dict[str, int] = {}
    for k, shape in enumerate(shapes):
        label = name2label[shape.label]
        label_lut[k + 1] = label.id
        if label.hasInstances:
            inst_lut[k + 1] = label.id * 1000 + counters.get(shape.label, 0)
            counters[shape.label] = counters.get(shape.label, 0) + 1
        else:
            inst_lut[k + 1] = label.id
    label_ids = label_lut[index]
    instance_ids = inst_lut[index]

    image = np.zeros((height, width, 3), dtype=np.float64)
    for k, shape in enumerate(shapes):
        ys, xs = np.nonzero(index == k + 1)
        if len(ys):
            image[ys, xs] = _paint(shape, ys.astype(np.float64), xs.astype(np.float64))
    image *= rng.uniform(0.85, 1.15)
    image += rng.normal(0.0, 6.0, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    polygons = {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [
            {"label": s.label, "polygon": [[x, y] for x, y in s.polygon]} for s in shapes
        ],
    }
    return image, label_ids, instance_ids, polygons


def _write_sample(
    split: str, city: str, frame: int, seed: int, index: int, height: int, width: int,
    cs_root: Path,
) -> None:
    """Render and write all files of one frame."""
    from cityscapesscripts.helpers.labels import id2label

    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
    image, label_ids, instance_ids, polygons = render_scene(rng, height, width)

    stem = f"{city}_000000_{frame:06d}"
    img_dir = cs_root / "leftImg8bit" / split / city
    gt_dir = cs_root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)

    train_lut = np.full(256, 255, dtype=np.uint8)
    color_lut = np.zeros((256, 4), dtype=np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256:
            train_lut[label_id] = label.trainId if 0 <= label.trainId < 255 else 255
            color_lut[label_id] = (*label.color, 255)

    Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(train_lut[label_ids]).save(
        gt_dir / f"{stem}_gtFine_labelTrainIds.png"
    )
    Image.fromarray(instance_ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    Image.fromarray(color_lut[label_ids]).save(gt_dir / f"{stem}_gtFine_color.png")
    with open(gt_dir / f"{stem}_gtFine_polygons.json", "w") as f:
        json.dump(polygons, f, indent="\t")


def _prepare_output(cs_root: Path) -> None:
    """Remove earlier synthetic cities; refuse to touch a folder holding other cities."""
    ours = {city for cities in SPLIT_CITIES.values() for city in cities}
    for kind in ("leftImg8bit", "gtFine"):
        for split in SPLIT_CITIES:
            split_dir = cs_root / kind / split
            if not split_dir.is_dir():
                continue
            foreign = sorted(p.name for p in split_dir.iterdir() if p.name not in ours)
            if foreign:
                raise FileExistsError(
                    f"{split_dir} holds data that this generator did not write "
                    f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                    "refusing to mix synthetic scenes into it. Choose another root."
                )
    for kind in ("leftImg8bit", "gtFine"):
        for split, cities in SPLIT_CITIES.items():
            for city in cities:
                shutil.rmtree(cs_root / kind / split / city, ignore_errors=True)


def generate_synthetic_cityscapes(
    root: str,
    num_train: int = 24,
    num_val: int = 8,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Write a synthetic street-scene dataset in the Cityscapes layout under ``root/cityscapes``.

    The images of each split are spread over two made-up cities (see ``SPLIT_CITIES``).
    Image ``i`` of a split depends only on ``(seed, split, i)``, so the output is fully
    deterministic. When ``root/cityscapes`` already holds a complete generation with the same
    parameters (recorded in the marker file ``MARKER_NAME``, written last), nothing is done;
    otherwise earlier synthetic cities are removed and everything is written again. A folder
    that holds other cities (e.g. the real dataset) is never modified.

    Args:
        root: the dataset root, i.e. the folder to export as ``DETECTRON2_DATASETS``.
        num_train, num_val: number of frames of the train and val splits (at least 1 each).
        height, width: image size in pixels (at least 32 x 64).
        seed: random seed.
        progress: show a tqdm progress bar.

    Returns:
        The absolute dataset root (``root``), to export as ``DETECTRON2_DATASETS``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
    if height < 32 or width < 64:
        raise ValueError(f"the image size must be at least 32 x 64, got {height} x {width}")
    root_abs = os.path.abspath(os.path.expanduser(root))
    cs_root = Path(root_abs) / "cityscapes"
    marker = cs_root / MARKER_NAME
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
    }
    if marker.is_file():
        try:
            with open(marker) as f:
                if json.load(f) == params:
                    return root_abs
        except (OSError, ValueError):
            pass
        marker.unlink()

    cs_root.mkdir(parents=True, exist_ok=True)
    _prepare_output(cs_root)

    jobs = []
    for split, count in (("train", num_train), ("val", num_val)):
        cities = SPLIT_CITIES[split]
        first = (count + 1) // 2
        for i in range(count):
            city, frame = (cities[0], i) if i < first else (cities[1], i - first)
            jobs.append((split, city, frame, i))

    from tqdm import tqdm

    for split, city, frame, i in tqdm(
        jobs, desc="synthetic cityscapes", unit="img", disable=not progress
    ):
        _write_sample(split, city, frame, seed, i, height, width, cs_root)

    from .data.panoptic import create_cityscapes_panoptic

    create_cityscapes_panoptic(str(cs_root), splits=list(SPLIT_CITIES))

    tmp = marker.with_name(marker.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(params, f, indent=2)
    os.replace(tmp, marker)
    return root_abs
