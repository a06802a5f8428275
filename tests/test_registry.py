"""``arf.registry.Registry``: one error message for unknown names everywhere, listing the choices."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import arf
from arf.errors import ArfError, ConfigError
from arf.registry import Registry


def test_register_get_names() -> None:
    r: Registry[int] = Registry("captioner")

    @r.register("hf")
    def hf() -> int:
        return 1

    r.register("retrieval", 2)
    r.register("file", 3)
    assert r.get("hf") is hf and r.get("retrieval") == 2
    assert r.names() == ["file", "hf", "retrieval"] and list(r) == r.names() and len(r) == 3
    assert r.names("*e*") == ["file", "retrieval"] and "hf" in r and "nope" not in r


def test_unknown_name_lists_choices() -> None:
    r: Registry[int] = Registry("suite")
    for name in ("zeroshot-10", "offline", "imagenet"):
        r.register(name, 0)
    with pytest.raises(ConfigError) as e:
        r.get("imagenet-shfit")
    assert str(e.value) == "unknown suite 'imagenet-shfit'; choose from imagenet, offline, zeroshot-10"
    assert isinstance(e.value, ArfError)


def test_duplicate_registration_is_a_bug_not_a_silent_override() -> None:
    r: Registry[int] = Registry("method")
    r.register("arf", 1)
    with pytest.raises(ValueError, match="method 'arf' is already registered"):
        r.register("arf", 2)
    assert r.get("arf") == 1


def _all_registries() -> dict[str, Registry]:
    """Every Registry defined at module level anywhere in the arf package (imports all its modules)."""
    found: dict[int, tuple[str, Registry]] = {}  # by identity: packages re-export their registries
    for info in pkgutil.walk_packages(arf.__path__, "arf."):
        if info.name.startswith("arf.cli"):
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, Registry):
                found.setdefault(id(value), (f"{info.name}.{attr}", value))
    return dict(found.values())


def test_every_registry_in_arf_names_its_choices() -> None:
    registries = _all_registries()
    assert registries, "the package defines registries (models, suites, methods, captioners, ...)"
    for label, reg in registries.items():
        with pytest.raises(ConfigError) as e:
            reg.get("no-such-name-xyz")
        msg = str(e.value)
        assert msg.startswith(f"unknown {reg.kind} 'no-such-name-xyz'; choose from"), (label, msg)
        assert all(name in msg for name in reg.names()), label
