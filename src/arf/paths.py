"""Where ARF keeps caches: one root (``ARF_HOME``, default ``~/.cache/arf``) shared by setup and the library."""

from __future__ import annotations

import os
from pathlib import Path


def arf_home() -> Path:
    return Path(os.environ.get("ARF_HOME", Path.home() / ".cache" / "arf")).expanduser()


def npm_dir() -> Path:
    """npm tarballs fetched by ``scripts/bootstrap.sh`` (``npm pack``)."""
    return arf_home() / "npm"


def data_dir() -> Path:
    return Path(os.environ.get("ARF_DATA", arf_home() / "data")).expanduser()


def models_dir() -> Path:
    return arf_home() / "models"
