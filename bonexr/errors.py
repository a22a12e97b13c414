"""Exceptions that describe a user's mistake rather than a bug.

Command-line entry points print these as one clean line (no traceback) and exit non-zero;
the service maps the image errors onto precise HTTP statuses.
"""


class BonexrError(Exception):
    """Base class for errors whose message is meant for the user."""


class DataError(BonexrError):
    """The dataset on disk is missing, malformed, or cannot support the requested operation."""


class ConfigError(BonexrError):
    """A configuration value (CLI flag, env var, body part name, ...) is invalid."""


class BundleError(BonexrError):
    """A model bundle is missing, incomplete, or fails its integrity check."""


class ImageError(BonexrError):
    """An image cannot be accepted. Subclasses say why, so callers can map them to statuses."""


class UnsupportedFormatError(ImageError):
    """The bytes are not one of the allowed image formats (checked by magic bytes)."""


class ImageTooLargeError(ImageError):
    """The image exceeds the byte or pixel limit."""


class UndecodableImageError(ImageError):
    """The bytes claim an allowed format but cannot be decoded into a usable image."""
