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


#: Longest side the map's arithmetic runs at when drawing it. The picture is then scaled to
#: the upload's own size in 8-bit planes, so a 7000 px radiograph costs a few of its uint8
#: planes instead of several float copies of itself (the map is a 6x6 to 12x12 grid
#: upsampled bilinearly: nothing finer than this working size exists in it).
WORKING_SIDE = 1024


def working_size(width: int, height: int, max_side: int = WORKING_SIDE) -> tuple[int, int]:
    """``(width, height)`` scaled down so the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _levels_image(cam: np.ndarray, width: int, height: int, size: int) -> Image.Image:
    """The 0..255 map over a ``width`` x ``height`` image, computed at the working size."""
    work_w, work_h = working_size(width, height)
    levels = Image.fromarray(_levels(to_image_grid(cam, work_w, work_h, size)), mode="L")
    return levels.resize((width, height), Image.Resampling.BILINEAR)


def render_overlay(
    image: Image.Image, cam: np.ndarray, size: int, opacity: float = 0.5
) -> Image.Image:
    """:func:`overlay` of a raw CAM on ``image`` at the image's own size, at bounded cost.

    Same colours and blend as :func:`overlay`, but the float arithmetic runs at
    :data:`WORKING_SIDE` and the full-size work is uint8 (a palette lookup and one masked
    paste), so memory is a few 8-bit planes of the image whatever its size.
    """
    levels = _levels_image(cam, image.width, image.height, size)
    weight = float(np.clip(opacity, 0.0, 1.0))
    mask = levels.point([round(v * weight) for v in range(256)])
    colours = levels.copy()
    colours.putpalette(_TABLE.tobytes())
    picture = image.convert("L").convert("RGB")
    picture.paste(colours.convert("RGB"), (0, 0), mask)
    return picture


def render_raw(width: int, height: int, cam: np.ndarray, size: int) -> Image.Image:
    """:func:`to_png16` of a raw CAM at ``width`` x ``height``, computed at the working
    size and scaled up as 16-bit (bounded memory, as :func:`render_overlay`)."""
    work_w, work_h = working_size(width, height)
    small = to_png16(to_image_grid(cam, work_w, work_h, size))
    return small.resize((width, height), Image.Resampling.BILINEAR)
