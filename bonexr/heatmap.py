"""Heat maps: a model's class activation map placed back on the original image, and drawn.

The part models output their CAM on the feature grid of the letterboxed model input (see
``training.models.with_cam``). :func:`to_image_grid` undoes the letterbox with
:func:`bonexr.imaging.letterbox_geometry`, the same definition that prepared the pixels, so
the map lines up with the radiograph; the evaluation's localisation score and the
service's ``/heatmap`` both use it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bonexr.imaging import letterbox_geometry

#: Colour stops of the overlay's colour map (black-red-yellow-white, "hot"-like: readable
#: over a grayscale radiograph and in grayscale print).
_STOPS = np.array(
    [[0, 0, 0], [128, 0, 32], [230, 40, 20], [255, 160, 0], [255, 255, 160]], dtype=np.float64
)


def normalized(cam: np.ndarray) -> np.ndarray:
    """Scale a raw CAM to 0..1 over its own range (all zeros when flat)."""
    cam = np.asarray(cam, dtype=np.float64)
    lo, hi = float(cam.min()), float(cam.max())
    if hi - lo < 1e-12:
        return np.zeros(cam.shape, dtype=np.float32)
    return ((cam - lo) / (hi - lo)).astype(np.float32)


def to_image_grid(cam: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """A ``(height, width)`` 0..1 map over the original image from a raw CAM grid.

    The grid covers the ``size`` x ``size`` model input: upsampled bilinearly to it, the
    letterbox padding is cut off, the rest resized to the image, and only then scaled to
    0..1, so the hottest point *on the image* is 1 (padding never wins).
    """
    grid = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    square = grid.resize((size, size), Image.Resampling.BILINEAR)
    x0, y0, w, h = letterbox_geometry(width, height, size)
    content = square.crop((x0, y0, x0 + w, y0 + h))
    return normalized(np.asarray(content.resize((width, height), Image.Resampling.BILINEAR)))


def peak(heat: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the map's maximum (the pointing game's guess)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def _colour_table() -> np.ndarray:
    """256 colours along the stops: level ``i`` is the colour of ``i / 255``."""
    position = np.linspace(0.0, 1.0, 256) * (len(_STOPS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_STOPS) - 2)
    frac = (position - low)[:, None]
    table: np.ndarray = np.rint(_STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac)
    return table.astype(np.uint8)


_TABLE = _colour_table()


def _levels(heat: np.ndarray) -> np.ndarray:
    levels: np.ndarray = np.rint(np.clip(heat, 0.0, 1.0) * 255)
    return levels.astype(np.uint8)


def colorize(heat: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours for a 0..1 map (256 levels)."""
    colours: np.ndarray = _TABLE[_levels(heat)]
    return colours


def overlay(image: Image.Image, heat: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The radiograph in gray with the map's colours blended in, more where it is hotter.

    ``opacity`` (0..1) is the blend weight at the map's maximum (Pillow's composite: a
    few milliseconds for a radiograph).
    """
    base = image.convert("L").convert("RGB")
    colours = Image.fromarray(colorize(heat), mode="RGB")
    weight = float(np.clip(opacity, 0.0, 1.0))
    mask = Image.fromarray(_levels(heat * weight), mode="L")
    return Image.composite(colours, base, mask)


def to_png16(heat: np.ndarray) -> Image.Image:
    """The 0..1 map as a 16-bit grayscale image (``/heatmap?format=raw``)."""
    return Image.fromarray(np.rint(np.clip(heat, 0, 1) * 65535).astype(np.uint16))
