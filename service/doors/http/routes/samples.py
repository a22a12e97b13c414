"""GET /samples: radiographs a new user can try from the page, from ``BONEXR_SAMPLES_DIR``.

The project commits no radiographs (FracAtlas's licence allows it, with attribution, but the
images stay out of git); a site or a developer points the setting at a folder, and the
page lists the first :data:`MAX_SAMPLES` images with the folder's attribution. A name not
in the listing is a 404, so nothing outside the folder can be read through it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from service.domain.errors import UploadNotFoundError
from service.doors.http.deps import ServicesDep
from service.doors.http.errors import error_responses

router = APIRouter(tags=["samples"])

MAX_SAMPLES = 24
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".dcm"}
ATTRIBUTION_FILES = ("ATTRIBUTION", "ATTRIBUTION.md", "ATTRIBUTION.txt", "README.md")


class Sample(BaseModel):
    name: str
    url: str = Field(description="GET it for the image (then upload it as any file).")


class Samples(BaseModel):
    samples: list[Sample]
    attribution: str | None = Field(description="Whose images these are, and their licence.")


def listing(folder: Path | None) -> list[Path]:
    """The sample images (regular files with an image suffix), by name, at most 24."""
    if folder is None or not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    return found[:MAX_SAMPLES]


def attribution(folder: Path | None) -> str | None:
    """The title, source and licence lines of the folder's (or its parent's) attribution
    file: its first two paragraphs, as one line."""
    if folder is None:
        return None
    for place in (folder, folder.parent):
        for name in ATTRIBUTION_FILES:
            path = place / name
            if path.is_file():
                paragraphs = path.read_text(errors="replace").strip().split("\n\n")[:2]
                text = " ".join(" ".join(p.split()) for p in paragraphs).lstrip("# ")
                return text.replace("*", "")[:600] or None
    return None


@router.get("/samples", response_model=Samples, summary="Radiographs to try (if configured)")
async def samples(services: ServicesDep) -> Samples:
    folder = services.settings.samples_dir
    found = await run_in_threadpool(listing, folder)
    return Samples(
        samples=[Sample(name=p.name, url=f"/samples/{p.name}") for p in found],
        attribution=await run_in_threadpool(attribution, folder) if found else None,
    )


@router.get(
    "/samples/{name}",
    response_class=FileResponse,
    summary="One sample image",
    responses=error_responses(404),
)
async def sample(services: ServicesDep, name: str) -> FileResponse:
    found = {p.name: p for p in await run_in_threadpool(listing, services.settings.samples_dir)}
    if name not in found:
        raise UploadNotFoundError("no sample with that name")
    return FileResponse(found[name])
