"""Usage rules, built from the live settings and the loaded manifest, as JSON or a PNG.

Why generated: a hand-made rules image goes stale the moment someone changes a limit or
ships a bundle with other body parts. Here the numbers come from the same objects that
enforce them.
"""

from __future__ import annotations

import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from bonexr.bundle import INTENDED_USE, Manifest
from bonexr.imaging import MIN_SIDE
from service.doors.http.schemas import ModelRef, Rules
from service.settings import Settings

ACCEPTED_FORMATS = ["PNG", "JPEG", "WebP", "DICOM"]
ABNORMAL_MEANS = (
    "'abnormal' means what the bundle was trained to flag: for a MURA-trained bundle, MURA's "
    "label (any abnormality, including fractures, metal hardware, degenerative change and "
    "other findings); for a FracAtlas-trained bundle, a fracture. 'normal' means nothing "
    "was flagged, not that the bone is healthy."
)
NOT_A_MEDICAL_DEVICE = (
    "Not a medical device and not a diagnosis. Every result must be reviewed by a qualified "
    "reader; use it only to prioritise studies for review."
)


def build_rules(settings: Settings, manifest: Manifest | None, model_status: str) -> Rules:
    """The rules as data: everything comes from ``settings`` and ``manifest``."""
    return Rules(
        accepted_formats=ACCEPTED_FORMATS,
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        min_side_pixels=MIN_SIDE,
        body_parts=list(manifest.body_parts) if manifest else [],
        abnormal_means=ABNORMAL_MEANS,
        fractured_means=ABNORMAL_MEANS,
        not_a_medical_device=NOT_A_MEDICAL_DEVICE,
        intended_use=manifest.intended_use if manifest else INTENDED_USE,
        model=ModelRef(name=manifest.name, version=manifest.version) if manifest else None,
        model_status=model_status,
        synthetic=manifest.synthetic if manifest else None,
        retention_hours=settings.retention_hours,
        api_key_required=bool(settings.api_key_list()),
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def rules_lines(rules: Rules) -> list[tuple[str, str]]:
    """(style, text) lines for the image: 'title', 'head' or 'body'."""
    model = f"{rules.model.name} {rules.model.version}" if rules.model else "none"
    parts = ", ".join(rules.body_parts) or "unknown (no model loaded)"
    lines: list[tuple[str, str]] = [
        ("title", "bonexr - usage rules"),
        ("head", "What you may upload"),
        ("body", f"Formats: {', '.join(rules.accepted_formats)} (checked by content, not name)"),
        (
            "body",
            f"At most {_size(rules.max_upload_bytes)} ({rules.max_upload_bytes:,} bytes) per file",
        ),
        (
            "body",
            f"At most {rules.max_pixels:,} pixels; each side at least {rules.min_side_pixels} px",
        ),
        ("body", f"Body parts: {parts} (one radiograph view per upload)"),
        ("body", "Images are stored as grayscale PNG with all metadata removed"),
    ]
    if rules.retention_hours:
        lines.append(("body", f"Uploads are deleted after {rules.retention_hours:g} hours"))
    if rules.api_key_required:
        lines.append(("body", "Every request needs the X-API-Key header"))
    lines += [("head", "What 'abnormal' means"), ("body", rules.abnormal_means)]
    lines += [("head", "Not a medical device"), ("body", rules.not_a_medical_device)]
    lines += [("head", "Model"), ("body", f"{model} ({rules.model_status})")]
    if rules.synthetic:
        lines.append(("body", "DEMO MODEL trained on synthetic images: not for clinical use"))
    lines.append(("body", rules.intended_use))
    return lines


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=16)
def _render(rules_json: str) -> bytes:
    rules = Rules.model_validate_json(rules_json)
    width, margin = 900, 32
    fonts = {"title": _font(30), "head": _font(21), "body": _font(17)}
    wrap = {"title": 60, "head": 80, "body": 92}
    rows: list[tuple[str, str]] = []
    for style, text in rules_lines(rules):
        prefix = "- " if style == "body" else ""
        for i, chunk in enumerate(textwrap.wrap(text, wrap[style]) or [""]):
            rows.append((style, (prefix if i == 0 else "  " * bool(prefix)) + chunk))
    spacing = {"title": 44, "head": 38, "body": 24}
    height = margin * 2 + sum(spacing[s] for s, _ in rows)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    y = margin
    for style, text in rows:
        if style == "head":
            y += 10
        draw.text((margin, y), text, fill=0, font=fonts[style])
        y += spacing[style] - (10 if style == "head" else 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render_rules_png(rules: Rules) -> bytes:
    """The rules as a PNG (cached per distinct rules content)."""
    return _render(rules.model_dump_json())
