"""Class names, prompt templates and label-space metadata shipped as JSON data files (``assets/``).

``classnames/<name>.json`` is a list of class names in label order; ``templates/<name>.json`` a list of prompt
templates with ``{}`` for the class name; ``meta/<name>.json`` holds folder orders, masks and mappings.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from arf.errors import ConfigError

ASSETS = Path(__file__).parent / "assets"


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in (ASSETS / kind).glob("*.json"))


@cache
def _load(kind: str, name: str) -> Any:
    path = ASSETS / kind / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"unknown {kind[:-1] if kind.endswith('s') else kind} asset {name!r}; choose from {', '.join(_names(kind))}"
        )
    return json.loads(path.read_text())


def load_classnames(name: str) -> list[str]:
    return list(_load("classnames", name))


def load_templates(name: str) -> list[str]:
    return list(_load("templates", name))


def load_json_asset(name: str) -> Any:
    """A metadata asset (``meta/<name>.json``): wnid lists, class masks, label maps."""
    return _load("meta", name)


def list_assets(kind: str) -> list[str]:
    return _names(kind)
