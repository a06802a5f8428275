"""User-facing errors. The CLI prints these as one line (``arf: error: ...``) and exits 2; anything else is a bug
and keeps its traceback."""

from __future__ import annotations


class ArfError(Exception):
    """Base class for errors caused by the user's input, files or environment."""


class ConfigError(ArfError, ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


class InputFileError(ArfError, FileNotFoundError):
    """A missing or unusable input file; the message names the file."""
