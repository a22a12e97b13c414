"""The out-of-distribution evaluation set: images the models were never trained to judge,
built from what installs offline, so every export reports how often the gate refuses them.

Four kinds, each a list of ``(kind, name, decoded image)``:

* ``photo``: the sample images that ship inside scikit-image (cameraman, astronaut,
  coins, ...), when scikit-image is installed;
* ``dicom``: pydicom's bundled test files with pixel data (CT, MR, US, NM, secondary
  capture), decoded by :func:`bonexr.imaging.decode_upload` with their Modality and
  BodyPartExamined, so both gates are measured;
* ``drawing``: synthetic radiograph-style drawings of body parts that are not upper
  limbs (chest, skull, pelvis, knee, abdomen), drawn in the demo data's style;
* ``blank_noise``: black, white, grey, gradient, uniform and Gaussian noise, stripes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bonexr.errors import ImageError
from bonexr.imaging import decode_upload, to_grayscale

log = logging.getLogger(__name__)

#: scikit-image sample images that ship in its wheel (no download).
SKIMAGE_SAMPLES = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
    "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
)  # fmt: skip


@dataclass(frozen=True)
class OodImage:
    kind: str
    name: str
    image: Image.Image  # 8-bit grayscale
    modality: str | None = None
    body_part: str | None = None


def photos() -> list[OodImage]:
    """scikit-image's bundled samples ([] when scikit-image is not installed)."""
    try:
        import skimage.data
    except ImportError:
        log.warning("scikit-image is not installed: no photos in the OOD evaluation set")
        return []
    found = []
    for name in SKIMAGE_SAMPLES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            array = np.asarray(loader())
        except Exception:  # a sample that would need a download: skip it
            continue
        if array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] not in (3, 4):
            array = array[0]
        found.append(OodImage("photo", name, to_grayscale(Image.fromarray(array))))
    return found


def dicom_files() -> list[OodImage]:
    """pydicom's bundled test files that decode (each with its own tags).

    Read from the installed package's folder, not with ``get_testdata_files``: that one also
    tries to download pydicom's external test files, which must never happen here (and
    would make the set depend on the network)."""
    from pydicom.data.data_manager import DATA_ROOT

    found = []
    for path in sorted((Path(DATA_ROOT) / "test_files").glob("*.dcm")):
        try:
            decoded = decode_upload(Path(path).read_bytes())
        except (ImageError, OSError):
            continue
        found.append(
            OodImage("dicom", Path(path).name, decoded.image, decoded.modality, decoded.body_part)
        )
    return found


def _film(size: int, rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("L", (size, size), int(rng.integers(5, 30)))
    return image, ImageDraw.Draw(image)


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(2.0)), dtype=np.float32)
    noisy = blurred + rng.normal(0, 6, blurred.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _chest(size: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _film(size, rng)
    s = size
    draw.ellipse((0.1 * s, 0.1 * s, 0.9 * s, 0.95 * s), fill=70)  # torso
    draw.rectangle((0.46 * s, 0.05 * s, 0.54 * s, 0.95 * s), fill=150)  # spine
    for i in range(9):  # ribs, both sides
        y = (0.2 + 0.07 * i) * s
        for left in (True, False):
            x0, x1 = (0.15 * s, 0.47 * s) if left else (0.53 * s, 0.85 * s)
            box = (x0, y - 0.08 * s, x1, y + 0.08 * s)
            draw.arc(box, 180, 360, fill=170, width=max(2, s // 80))
    draw.ellipse((0.45 * s, 0.45 * s, 0.7 * s, 0.8 * s), fill=110)  # heart shadow
    return _finish(image, rng)


def _skull(size: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _film(size, rng)
    s = size
    draw.ellipse((0.12 * s, 0.08 * s, 0.88 * s, 0.9 * s), fill=180)
    draw.ellipse((0.17 * s, 0.13 * s, 0.83 * s, 0.85 * s), fill=90)
    draw.ellipse((0.3 * s, 0.45 * s, 0.45 * s, 0.58 * s), fill=40)  # orbits
    draw.ellipse((0.55 * s, 0.45 * s, 0.7 * s, 0.58 * s), fill=40)
    draw.polygon([(0.35 * s, 0.8 * s), (0.65 * s, 0.8 * s), (0.5 * s, 0.98 * s)], fill=160)
    return _finish(image, rng)


def _pelvis(size: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _film(size, rng)
    s = size
    draw.rectangle((0.05 * s, 0.2 * s, 0.95 * s, 0.95 * s), fill=70)
    draw.ellipse((0.08 * s, 0.15 * s, 0.5 * s, 0.6 * s), fill=160)  # iliac wings
    draw.ellipse((0.5 * s, 0.15 * s, 0.92 * s, 0.6 * s), fill=160)
    draw.ellipse((0.3 * s, 0.45 * s, 0.7 * s, 0.8 * s), fill=60)  # pelvic inlet
    draw.ellipse((0.12 * s, 0.6 * s, 0.3 * s, 0.78 * s), fill=190)  # femoral heads
    draw.ellipse((0.7 * s, 0.6 * s, 0.88 * s, 0.78 * s), fill=190)
    return _finish(image, rng)


def _knee(size: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _film(size, rng)
    s = size
    draw.rectangle((0.2 * s, 0.0, 0.8 * s, s), fill=75)
    draw.rectangle((0.35 * s, 0.0, 0.65 * s, 0.45 * s), fill=170)  # femur
    draw.ellipse((0.28 * s, 0.35 * s, 0.72 * s, 0.55 * s), fill=175)  # condyles
    draw.rectangle((0.33 * s, 0.58 * s, 0.67 * s, s), fill=170)  # tibia
    draw.ellipse((0.58 * s, 0.3 * s, 0.75 * s, 0.48 * s), fill=190)  # patella
    return _finish(image, rng)


def _abdomen(size: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _film(size, rng)
    s = size
    draw.rectangle((0.05 * s, 0.0, 0.95 * s, s), fill=80)
    for i in range(5):  # lumbar vertebrae
        y = (0.1 + 0.17 * i) * s
        draw.rectangle((0.42 * s, y, 0.58 * s, y + 0.13 * s), fill=165)
    for _ in range(6):  # bowel gas
        x, y = rng.uniform(0.15, 0.85) * s, rng.uniform(0.15, 0.85) * s
        r = rng.uniform(0.03, 0.07) * s
        draw.ellipse((x - r, y - r, x + r, y + r), fill=35)
    return _finish(image, rng)


DRAWINGS: dict[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "chest": _chest,
    "skull": _skull,
    "pelvis": _pelvis,
    "knee": _knee,
    "abdomen": _abdomen,
}


def drawings(per_kind: int = 4, size: int = 384, seed: int = 7) -> list[OodImage]:
    rng = np.random.default_rng(seed)
    return [
        OodImage("drawing", f"{name}-{i}", draw(size, rng))
        for name, draw in DRAWINGS.items()
        for i in range(per_kind)
    ]


def blank_and_noise(size: int = 384, seed: int = 11) -> list[OodImage]:
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1))
    stripes = ((np.arange(size) // 16) % 2 * 255).astype(np.uint8)
    arrays = {
        "black": np.zeros((size, size)),
        "white": np.full((size, size), 255),
        "grey": np.full((size, size), 128),
        "gradient": ramp,
        "uniform-noise": rng.uniform(0, 255, (size, size)),
        "gaussian-noise": rng.normal(128, 40, (size, size)),
        "stripes": np.tile(stripes, (size, 1)),
        "checker": (np.indices((size, size)).sum(axis=0) // 24 % 2) * 255,
    }
    return [
        OodImage("blank_noise", name, Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
        for name, a in arrays.items()
    ]


def ood_evaluation_set() -> list[OodImage]:
    """Every kind above (the same images on every run: fixed seeds, shipped files)."""
    return [*photos(), *dicom_files(), *drawings(), *blank_and_noise()]
