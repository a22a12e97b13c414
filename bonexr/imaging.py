"""Image decoding and preprocessing: the one implementation training and serving share.

Every path from bytes to model input goes through :func:`decode_image` and
:func:`prepare_pixels`. The training ``tf.data`` pipeline calls them (via
``tf.numpy_function``), the evaluation calls them, and the service calls them; the
numerical normalisation (ImageNet mean subtraction or scaling) lives *inside* the models.
So there is no second resize or colour conversion anywhere that could drift.

Why letterboxing: radiographs vary in aspect ratio (a forearm is long, a shoulder is
square). Squashing them to a square distorts bone angles, which is exactly what the
router and abnormality models look at, so the long side is scaled to ``size`` and the
short side padded with black (the background of a radiograph).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, ImageOps

from bonexr import jpeg
from bonexr.dicom import check_budget
from bonexr.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from bonexr.pixels import to_uint8

#: Name of the preprocessing recipe, stored in every bundle manifest. Change it whenever the
#: recipe changes so an old bundle is never fed pixels prepared a different way.
PREPROCESSING_ID = "gray8-letterbox-bilinear-v1"

# What :func:`model_input` feeds a model: float32 ``(N, size, size, 1)`` in 0..255, with the
# backbone's own normalisation inside the model graph. A bundle's ``input`` must say the
# same (checked at load by :mod:`bonexr.contract`).
INPUT_CHANNELS = 1
INPUT_DTYPE = "float32"
INPUT_VALUE_RANGE: tuple[float, float] = (0.0, 255.0)
INPUT_NORMALIZATION = "inside-model"

DEFAULT_MAX_PIXELS = 50_000_000
#: Decoded-memory budget per image (bytes), estimated from the header before decoding.
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024
MIN_SIDE = 8


@dataclass(frozen=True)
class SniffedFormat:
    """What the magic bytes say a payload is."""

    name: str  # "PNG", "JPEG", "WEBP" or "DICOM"
    media_type: str


def sniff_format(data: bytes) -> SniffedFormat | None:
    """Identify an image by its magic bytes, never by file name or Content-Type."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return SniffedFormat("PNG", "image/png")
    if data.startswith(b"\xff\xd8\xff"):
        return SniffedFormat("JPEG", "image/jpeg")
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return SniffedFormat("WEBP", "image/webp")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return SniffedFormat("DICOM", "application/dicom")
    return None


@dataclass(frozen=True)
class DecodedImage:
    """An upload decoded to 8-bit grayscale, with what the caller should know about it."""

    image: Image.Image
    format: str  # "PNG", "JPEG", "WEBP" or "DICOM"
    body_part: str | None = None  # DICOM BodyPartExamined, when the file names one
    warnings: tuple[str, ...] = ()
    modality: str | None = None  # DICOM Modality, when the file names one


def decode_upload(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Decode untrusted bytes into an 8-bit grayscale (mode ``L``) image.

    Both limits are checked from the header, before any pixel data is decoded: the pixel
    count, and the memory the decoded pixels would take (width x height x channels x
    bytes per sample x frames), so a small file claiming a huge or deep image is refused
    cheaply.

    Raises:
        UnsupportedFormatError: not PNG/JPEG/WebP/DICOM by magic bytes, or an undecodable
            DICOM transfer syntax.
        ImageTooLargeError: over ``max_pixels`` pixels or ``max_decoded_bytes`` decoded.
        UndecodableImageError: truncated, corrupt, degenerate (< 8 px a side) or empty.
    """
    if not data:
        raise UndecodableImageError("the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(
            "unsupported image format: expected PNG, JPEG, WebP or DICOM (checked by content)"
        )
    if fmt.name == "DICOM":
        from bonexr.dicom import decode_dicom

        dicom = decode_dicom(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
        _check_size(dicom.image.size, max_pixels)
        return DecodedImage(dicom.image, fmt.name, dicom.body_part, dicom.warnings, dicom.modality)
    if fmt.name == "JPEG" and (reason := jpeg.incomplete_reason(data)):
        raise UndecodableImageError(f"cannot decode JPEG image: {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[fmt.name])
            _check_size(image.size, max_pixels)
            check_budget(
                decoded_bytes(image, data, fmt.name),
                max_decoded_bytes,
                what=f"a {image.width}x{image.height} {fmt.name} image",
            )
            image.load()
            if fmt.name == "JPEG" and (reason := jpeg.unfilled_reason(data)):
                raise UndecodableImageError(f"cannot decode JPEG image: {reason}")
    except (ImageTooLargeError, UndecodableImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image has too many pixels (limit {max_pixels:,})") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise UndecodableImageError(f"cannot decode {fmt.name} image: {_reason(exc)}") from exc
    image = ImageOps.exif_transpose(image) if fmt.name == "JPEG" else image
    return DecodedImage(to_grayscale(image), fmt.name)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Image.Image:
    """:func:`decode_upload`, image only (training and evaluation need nothing else)."""
    return decode_upload(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes).image


def _reason(exc: Exception) -> str:
    """A safe description of a decoder failure: never the library's own text, which can
    carry object reprs, paths or versions."""
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError):
        return "the file is truncated"
    return "the data is corrupt or not a complete image"


#: Bytes per sample Pillow's modes hold (the decoded image's own storage).
_MODE_SAMPLE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def decoded_bytes(image: Image.Image, data: bytes, fmt: str) -> int:
    """Memory the decoded pixels take, from the header: width x height x channels x bytes
    per sample (x frames). For PNG the bit depth comes from IHDR: Pillow shows 16-bit
    colour as an 8-bit mode, but its decoder still works through the 16-bit rows."""
    width, height = image.size
    channels = len(image.getbands())
    sample = _MODE_SAMPLE_BYTES.get(image.mode, 1)
    if fmt == "PNG" and len(data) >= 29 and data[12:16] == b"IHDR":
        bit_depth, color_type = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type, channels)
        sample = max(1, bit_depth // 8)
    frames = max(1, int(getattr(image, "n_frames", 1) or 1))
    return width * height * channels * sample * frames


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    if min(width, height) < MIN_SIDE:
        raise UndecodableImageError(
            f"image is {width}x{height}; each side must be at least {MIN_SIDE} pixels"
        )


def to_grayscale(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit grayscale the same way everywhere.

    Transparent pixels become black (a radiograph's background); 16-bit and float images
    are stretched over their own range; palette, CMYK and RGB go through Pillow's
    ITU-R 601-2 luma conversion.
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(to_uint8(np.asarray(image)), mode="L")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("LA", "RGBA", "PA"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return image.convert("L")  # "1", "RGB", "CMYK", "YCbCr", ...


def prepare_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Letterbox a grayscale image into a ``(size, size)`` uint8 array.

    The long side is resized to ``size`` with bilinear filtering (antialiased when
    shrinking) and the image is centred on a black square.
    """
    if image.mode != "L":
        image = to_grayscale(image)
    x0, y0, new_w, new_h = letterbox_geometry(image.width, image.height, size)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, (x0, y0))
    return np.asarray(canvas, dtype=np.uint8)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` image lands in the ``size`` square: ``(x0, y0, w, h)``.

    The one definition, used to prepare pixels and to map heat maps back onto the image.
    """
    scale = size / max(width, height)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def model_input(pixels: np.ndarray) -> np.ndarray:
    """Turn prepared uint8 pixels ``(H, W)`` or a batch ``(N, H, W)`` into model input.

    Models take float32 ``(N, H, W, 1)`` in 0..255; channel replication and normalisation
    happen inside the model graph.
    """
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    return array[..., None]


def preprocess_bytes(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> prepared ``(size, size)`` uint8 pixels."""
    return prepare_pixels(decode_image(data, max_pixels=max_pixels), size)


def preprocess_file(path: str | Path, size: int) -> np.ndarray:
    """File -> prepared ``(size, size)`` uint8 pixels (the training and evaluation entry)."""
    return preprocess_bytes(Path(path).read_bytes(), size)


#: The stored PNG's encoder settings (libpng via imagecodecs): zlib level 1 with the RLE
#: strategy and the fixed SUB filter. Measured by ``python -m bench.upload_bench`` on
#: synthetic radiographs: about 4x faster than Pillow's level 1 (whose adaptive filter
#: search is most of its cost) and smaller files; lossless either way.
PNG_ENCODING = {"level": 1, "strategy": 3, "filter": 16}


def encode_png(image: Image.Image) -> bytes:
    """Re-encode pixels only: the PNG holds IHDR, IDAT and IEND, so no EXIF, text chunks,
    ICC profile or other metadata survive."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"encode_png takes 8-bit grayscale pixels, got {image.mode}")
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(pixels), **PNG_ENCODING))


def encode_png_pillow(image: Image.Image) -> bytes:
    """The previous encoder (Pillow, level 1), kept for the upload benchmark's before/after."""
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
