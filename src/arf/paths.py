"""Where ARF keeps caches: one root (``ARF_HOME``, default ``~/.cache/arf``) shared by setup and the library; and the
repository's ``configs/`` folder, which the demo and the read-out recipe load their method configs from."""

from __future__ import annotations

import os
from pathlib import Path

# The package is installed editable by ./run, so configs/ sits two folders above src/arf/.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def arf_home() -> Path:
    return Path(os.environ.get("ARF_HOME", Path.home() / ".cache" / "arf")).expanduser()


def npm_dir() -> Path:
    """npm tarballs fetched by ``scripts/bootstrap.sh`` (``npm pack``)."""
    return arf_home() / "npm"


def data_dir() -> Path:
    return Path(os.environ.get("ARF_DATA", arf_home() / "data")).expanduser()


def models_dir() -> Path:
    return arf_home() / "models"
