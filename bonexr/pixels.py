"""Mapping high-bit-depth pixel values to 8 bits without a floating-point copy of the image.

A 50-megapixel 16-bit image is 100 MB as stored but 400 MB as float64, which is what a
plain ``(x - lo) * 255 / (hi - lo)`` makes. For integer pixels of up to 16 bits the same
result is computed once per possible *code* (65,536 at most) and applied as a look-up
table, so decoding never holds more than the stored image, an index and the 8-bit output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Integer dtypes handled by a look-up table (every code enumerable).
_LUT_DTYPES = (np.uint8, np.uint16, np.int8, np.int16)


def codes_of(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(index, domain)`` for integer pixels of up to 16 bits, else ``None``.

    ``index`` is an unsigned view/array with ``domain[index] == pixels``; ``domain`` lists
    every value of the dtype, in the pixels' own dtype.
    """
    if pixels.dtype.type not in _LUT_DTYPES:
        return None
    info = np.iinfo(pixels.dtype)
    domain = np.arange(int(info.min), int(info.max) + 1).astype(pixels.dtype)
    if info.min == 0:
        return pixels, domain
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    sign_bit = np.array(1 << (8 * pixels.dtype.itemsize - 1), dtype=unsigned.dtype)
    return unsigned ^ sign_bit, domain  # two's complement -> offset binary


def to_uint8(
    pixels: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    over_output_range: bool = False,
) -> np.ndarray:
    """``transform(pixels)`` (identity by default) stretched linearly to 0..255, rounded.

    ``transform`` must act elementwise (a LUT, a window, a rescale). The stretch runs over
    the values present in the image, or with ``over_output_range`` over everything the
    transform can output for the dtype: that is a viewer's VOI window, where values below
    the window are black and above it white whatever the image holds.
    """
    mapped = codes_of(pixels)
    if mapped is None:
        values = np.asarray(transform(pixels) if transform else pixels, dtype=np.float64)
        return _stretch(values, values)
    index, domain = mapped
    values = np.asarray(transform(domain) if transform else domain, dtype=np.float64)
    if over_output_range:
        lut: np.ndarray = _stretch(values, values)
        return np.asarray(lut[index])
    present = np.bincount(index.ravel(), minlength=len(domain)).astype(bool)
    lut = _stretch(values, values[present])
    return np.asarray(lut[index])


def _stretch(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(seen)), float(np.max(seen))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.round((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
