"""Dataclass configs: defaults in code, then a YAML file, then dotted CLI overrides.

Each stage owns a dataclass (``TrainConfig``, ``CaptionConfig``, ...). ``load_config`` builds one from a YAML
file and ``key=value`` overrides and rejects unknown keys and wrongly typed values with an error that names the
field, before any heavy work starts. Stage-specific checks (negative lr, k = 0, ...) live in each dataclass's
``validate()`` and raise :class:`ConfigError` naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml

from arf.errors import ConfigError

__all__ = ["ConfigError", "check", "config_hash", "from_dict", "load_config", "parse_overrides", "save_config"]

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    # init=False fields are computed, never configured.
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


class _Raw:
    """A CLI override value before its type is known: ``prompt=Question: what`` must stay text for a ``str``
    field, while ``lr=1e-5`` must become a number. ``load_config`` keeps the raw text until the field is known."""

    __slots__ = ("parsed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parsed = _parse_scalar(text)

    def __repr__(self) -> str:
        return repr(self.text)


def _plain(value: Any) -> Any:
    """Replace every :class:`_Raw` in ``value`` by its YAML-parsed value."""
    if isinstance(value, _Raw):
        return value.parsed
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _parse_scalar(raw: str) -> Any:
    """YAML-parse an override value; text YAML would turn into a mapping, a date or an error stays text."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # "Question: what is it?" is a YAML mapping and 2024-01-01 a date; only explicit [..] / {..} mean structure.
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        return raw
    if isinstance(value, list) and not raw.lstrip().startswith("["):
        return raw
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return raw
    return value


def _is_path_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, PurePath)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, or raise naming the field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, _Raw):
        if tp is str or _is_path_type(tp):
            return tp(value.text)
        if origin is typing.Literal and value.text in args:
            return value.text
        if origin not in (typing.Union, types.UnionType):
            value = _plain(value)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, _Raw) and value.parsed is None)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {_plain(value)!r}")
    if origin is typing.Literal:
        # Compare type and value: True == 1 in Python, but a bool is not an allowed value of Literal[0, 1].
        for allowed in args:
            if isinstance(value, bool) == isinstance(allowed, bool) and type(value) is not _Raw and value == allowed:
                return allowed
        raise ConfigError(f"{name}: {value!r} is not allowed; choose from {', '.join(map(str, args))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            # tuple[int, str]: fixed length, one type per position.
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return out if (origin or tp) is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return _plain(dict(value))
    if tp is Any:
        return _plain(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    value = float(value)  # "1e3" (YAML 1.1 reads it as text)
                except ValueError:
                    pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if _is_path_type(tp):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise ConfigError(f"{name}: expected a path, got {value!r}")
    return _plain(value)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are an error naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_plain(data)!r}")
    types_ = _field_types(cls)
    unknown = sorted((set(data) - set(types_)), key=str)
    if unknown:
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]!s}; choose from {', '.join(prefix + k for k in types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    missing = [
        f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and f.name not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config field {prefix}{missing[0]}; set it in the YAML file or as {prefix}"
                          f"{missing[0]}=...")
    return cls(**kwargs)


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"override {item!r}: empty field name in {key.strip()!r}")
        parts = [p.strip() for p in parts]
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                # "a=1" then "a.b=2": a cannot be both a value and a section.
                raise ConfigError(f"override {item!r} conflicts with an earlier {'.'.join(parts[: depth + 1])}=...")
            node = child
        node[parts[-1]] = _Raw(raw)
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-5", "seed=1"]`` into a nested dict; values are parsed as YAML scalars.

    Text that YAML would read as a mapping or a date (``prompt=Question: what``) stays text; anything malformed
    raises :class:`ConfigError`, never another exception.
    """
    return _plain(_parse_overrides(overrides))
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults < YAML file < overrides, then ``validate()`` if the dataclass has one."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_bytes()) or {}  # bytes: YAML detects UTF-8/16, no newline rewriting
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    # Overrides keep their raw text until the field type is known (a str field takes it verbatim).
    data = _merge(data, _parse_overrides(list(overrides or [])))
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON types (paths as text, tuples as lists)."""
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, PurePath):
            return str(x)
        return x

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (a run dir never holds half a config.yaml)."""
    from arf.io import atomic_open

    # allow_unicode stays off: PyYAML would then write U+0085 / U+2028 raw, and YAML reads them back as line
    # breaks, so a prompt containing one would not survive the round trip. Escaped ASCII always does.
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(*parts: Any) -> str:
    """A short stable hash of configs/values, used as a cache key for stage outputs."""
    def norm(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.asdict(x)
        if isinstance(x, Path):
            return str(x)
        return x

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds (never ``assert`` on user input)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
