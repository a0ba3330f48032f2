"""Exception types. Every error a user can cause is one of these, with a message that
names the problem (the file, the key, the option) and, where there is one, the fix."""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class: the CLI prints these as one clean line instead of a traceback."""


class ConfigError(PolymodalError, ValueError):
    """A configuration is invalid: unknown key, wrong type, value out of its choices."""


class CheckpointError(PolymodalError):
    """A model directory or weights file cannot be used as it is."""


class ImageDecodeError(PolymodalError):
    """An image file is corrupt, truncated, empty, too large or not an image."""


class TokenizerError(PolymodalError):
    """A tokenizer is missing or does not fit the model."""


class DataError(PolymodalError):
    """A dataset cannot be read: missing file or column, empty, malformed rows."""


class StoreError(PolymodalError):
    """A store cannot be opened or used as asked: not a store, a newer format, or vectors
    made by another model than the one given."""


class StoreBusy(StoreError):
    """Another writer (an index job, `polymodal index`) holds the store."""
