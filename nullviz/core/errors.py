"""Specific exceptions for every kind of bad input.

Every message is one sentence that says what was given, what was expected and how to fix it, so the app
can show it as-is, and the command line can print it as one line on stderr (scikit-learn's message shape).
All inherit from :class:`NullvizError`, so a caller can catch "any user error" without hiding real bugs.
"""

from __future__ import annotations


class NullvizError(Exception):
    """Base class of every error caused by the user's input or environment (never by a bug)."""


class InvalidParameterError(NullvizError, ValueError):
    """A setting is out of its declared range or of the wrong kind."""

    def __init__(self, name: str, caller: str, expected: str, got: object):
        self.name, self.caller, self.expected, self.got = name, caller, expected, got
        super().__init__(f"The '{name}' parameter of {caller} must be {expected}. Got {got!r} instead.")


class ModelNotFoundError(NullvizError, LookupError):
    """The model name is not known to timm (nor is it nullviz's embedded default)."""


class NotAVisionTransformerError(NullvizError, TypeError):
    """The model exists but has no linear patch embedding, so it has no patch-embedding nullspace."""


class PretrainedWeightsUnavailableError(NullvizError, RuntimeError):
    """timm could not download the pretrained weights (offline, hub down, or no weights for that name)."""


class CheckpointError(NullvizError, RuntimeError):
    """A local checkpoint is missing, unreadable, or does not match the chosen architecture."""


class ImageLoadError(NullvizError, ValueError):
    """An uploaded or local file is not a usable image (empty, not an image, truncated, or too large)."""


class DataError(NullvizError, ValueError):
    """A data set directory or archive is missing, empty, or does not match the model's classes."""


class NoiseFileError(NullvizError, ValueError):
    """A saved noise file is missing, corrupt, or does not fit the current model/image geometry."""


class StoppedError(NullvizError):
    """A long job was stopped by the user before it produced a result."""


class JobNotFoundError(NullvizError, LookupError):
    """No such job (or not one of this workspace's: other workspaces' jobs are never revealed)."""


class UploadTooLargeError(NullvizError, ValueError):
    """An upload (or what it expands to) is over the server's limit."""


class ServerPathRefusedError(NullvizError, PermissionError):
    """A path on the server was given where this deployment accepts uploads only."""


class UnsupportedModelError(NullvizError, ValueError):
    """A Vision Transformer whose geometry nullviz does not handle (e.g. rectangular patches)."""


class ModelTooLargeError(NullvizError, ValueError):
    """The model has more parameters than this server's budget (checked before it is allocated)."""


class DiskSpaceError(UploadTooLargeError):
    """An upload would pass the workspace's disk quota, or leave the server's disk below its free-space floor."""
