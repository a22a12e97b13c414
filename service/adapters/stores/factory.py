"""Which upload store to use: ``BONEXR_UPLOAD_STORE`` names it (default: the
``BONEXR_UPLOAD_DIR`` folder)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from service.adapters.stores.base import UploadStore
from service.adapters.stores.folder import FileUploadStore
from service.adapters.stores.s3 import S3UploadStore, parse_s3_url
from service.adapters.stores.unusable import UnusableStore

if TYPE_CHECKING:
    from service.settings import Settings


def open_store(settings: Settings) -> UploadStore:
    """The store ``BONEXR_UPLOAD_STORE`` names (default: the ``BONEXR_UPLOAD_DIR`` folder).

    A store that cannot be used (a malformed URL, boto3 not installed) is returned as an
    :class:`UnusableStore`: the service starts, ``/ready`` answers 503 with the reason and
    every upload 503, instead of a crash loop with the reason buried in a log.
    """
    url = settings.upload_store
    if not url:
        return FileUploadStore(settings.upload_dir)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            return UnusableStore(f"upload store: {url!r} is not a file:///absolute/path URL")
        return FileUploadStore(Path(unquote(parsed.path)))
    if url.startswith("s3://"):
        try:
            parse_s3_url(url)
            import boto3  # noqa: F401
        except ValueError as exc:
            return UnusableStore(f"upload store: {exc}")
        except ImportError:
            return UnusableStore("upload store: s3:// needs boto3 (pip install 'bonexr[s3]')")
        return S3UploadStore(url)
    return UnusableStore("upload store: BONEXR_UPLOAD_STORE must be file:///path or s3://bucket")
