"""A suite described in a YAML file: your own task's sets (class folders or ``path,label`` manifests) and their roles.

Wherever a suite name is accepted (``arf eval --suite``, ``arf wise --eval``, ``arf wise-probe --suite``, a training
config's ``suite`` with ``train_set``), a path ending in ``.yaml`` / ``.yml`` names such a file::

    name: pets                  # default: the file's stem
    root: /data/pets            # where relative set paths live (default: the file's folder; --data-root wins)
    classnames: classes.json    # default for every set: a JSON list file, a .txt (one per line), an asset name
                                #   (imagenet, flowers102, ...) or an inline list; default: the class folder names
    templates: generic          # the same kinds (an asset: generic, imagenet, ...); default: generic
    sets:
      train:  {path: train, role: train}
      val:    {path: val, role: val}            # choose hyperparameters here, never on the test sets
      test:   {path: test, role: id}
      sketch: {path: sketch, role: shift}       # a subset of the classes is read with the finetuned head's columns
      flowers: {path: /data/flowers102, role: zeroshot, classnames: flowers102, templates: flowers102}

A set's ``path`` is a folder of class folders (``<class>/<image>``; folders sorted, numerically when all are
digits) or a ``.csv`` / ``.tsv`` / ``.parquet`` manifest with ``path`` and ``label`` columns (a class name or an
index; paths relative to the manifest's folder). The finetuned head covers a non-zero-shot set whose class names are
the ``id`` set's, or a subset of them (its columns are taken from the head, as for ImageNet-R); zero-shot sets are
read with the model's own text head. Every problem is one error naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from arf.data.assets import list_assets, load_classnames, load_templates
from arf.data.formats import ROLES, LabeledSet, Suite, folder_classname, read_class_folders, read_label_manifest
from arf.errors import ArfError, ConfigError, InputFileError

SUITE_FILE_SUFFIXES = (".yaml", ".yml")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet")
_SUITE_KEYS = {"name", "root", "classnames", "templates", "sets"}
_SET_KEYS = {"path", "role", "classnames", "templates"}


def is_suite_file(name: str) -> bool:
    return Path(name).suffix.lower() in SUITE_FILE_SUFFIXES


def _fail(path: Path, field: str, message: str) -> ConfigError:
    return ConfigError(f"suite file {path}: {field}: {message}")


def _text_list(spec: Any, kind: str, base: Path, where: Path, field: str) -> list[str]:
    """Class names or templates from an inline list, a .json / .txt file (relative to ``base``) or an asset."""
    if isinstance(spec, list):
        items = spec
    elif isinstance(spec, str):
        p = (base / spec).expanduser()
        if p.suffix.lower() in (".json", ".txt"):
            if not p.is_file():
                raise InputFileError(f"suite file {where}: {field}: {p} does not exist")
            try:
                items = json.loads(p.read_text()) if p.suffix.lower() == ".json" else [
                    line.strip() for line in p.read_text().splitlines() if line.strip()]
            except (ValueError, UnicodeDecodeError) as e:
                raise InputFileError(f"suite file {where}: {field}: cannot read {p} ({e})") from None
        elif spec in list_assets(kind):
            items = load_classnames(spec) if kind == "classnames" else load_templates(spec)
        else:
            raise _fail(where, field, f"{spec!r} is neither a .json / .txt file nor a {kind} asset; "
                                      f"assets: {', '.join(list_assets(kind))}")
    else:
        raise _fail(where, field, f"expected a list, a file or an asset name, got {type(spec).__name__}")
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise _fail(where, field, "must be a non-empty list of non-empty strings")
    return [str(x) for x in items]


def _read_set(name: str, entry: Any, suite: dict[str, Any], base: Path, data_root: Path, where: Path) -> LabeledSet:
    field = f"sets.{name}"
    if not isinstance(entry, dict):
        raise _fail(where, field, "expected a mapping with path and role")
    unknown = sorted(set(entry) - _SET_KEYS)
    if unknown:
        raise _fail(where, f"{field}.{unknown[0]}", f"unknown field; choose from {', '.join(sorted(_SET_KEYS))}")
    for key in ("path", "role"):
        if not entry.get(key):
            raise _fail(where, f"{field}.{key}", "missing")
    role = entry["role"]
    if role not in ROLES:
        raise _fail(where, f"{field}.role", f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    path = (data_root / str(entry["path"])).expanduser()
    cls_spec = entry.get("classnames", suite.get("classnames"))
    cls_field = f"{field}.classnames" if "classnames" in entry else "classnames"
    classnames = _text_list(cls_spec, "classnames", base, where, cls_field) if cls_spec is not None else None
    tpl_field = f"{field}.templates" if "templates" in entry else "templates"
    templates = _text_list(entry.get("templates", suite.get("templates", "generic")), "templates", base, where,
                           tpl_field)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        if classnames is None:
            raise _fail(where, f"{field}.classnames", "a manifest needs the class names (a list, a file or an asset), "
                                                      "here or at the top of the file")
        try:
            paths, labels = read_label_manifest(path, classnames)
        except ArfError as e:  # an unknown label, an escaping path, an unreadable file: say which set it was
            raise type(e)(f"suite file {where}: {field}: {e}") from None
        root = path.parent
    elif path.is_dir():
        try:
            paths, labels, folders = read_class_folders(path, classnames)
        except ArfError as e:  # e.g. 3 class folders but 2 class names
            raise type(e)(f"suite file {where}: {field}: {e}") from None
        if classnames is None:
            classnames = [folder_classname(f) for f in folders]  # as the built-in suites name them
        root = path
    else:
        raise InputFileError(f"suite file {where}: {field}.path: {path} is neither a folder of class folders nor a "
                             f"{' / '.join(MANIFEST_SUFFIXES)} manifest")
    try:
        return LabeledSet(name=name, role=role, classnames=classnames, templates=templates, paths=paths,
                          labels=labels, root=str(root), reference=suite["name"])
    except ConfigError as e:
        raise _fail(where, field, str(e)) from None


def _head_columns(sets: list[LabeledSet], where: Path) -> None:
    """Give a non-zero-shot set over a subset of the ``id`` set's classes that set's columns (``class_mask``)."""
    ids = [s for s in sets if s.role == "id"]
    if len(ids) != 1:
        return
    ref = ids[0].classnames
    index = {c: i for i, c in enumerate(ref)}
    for s in sets:
        if s.role in ("zeroshot", "val-zeroshot", "train") or s.classnames == ref:
            continue
        if all(c in index for c in s.classnames):
            s.class_mask = [index[c] for c in s.classnames]
        else:
            extra = next(c for c in s.classnames if c not in index)
            raise _fail(where, f"sets.{s.name}.classnames",
                        f"a {s.role} set's classes must be the id set's ({ids[0].name}) or a subset of them; "
                        f"{extra!r} is not one (give it role zeroshot to read it with the model's own head)")


def load_suite_file(path: str | Path, root: str | Path | None = None) -> Suite:
    """The suite a YAML file describes (module doc); ``root`` (``--data-root``) replaces its ``root:``."""
    where = Path(path).expanduser()
    if not where.is_file():
        raise InputFileError(f"suite file not found: {where}")
    try:
        spec = yaml.safe_load(where.read_bytes())
    except yaml.YAMLError as e:
        raise InputFileError(f"suite file {where}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise _fail(where, "(top level)", "expected a mapping with a 'sets' field")
    unknown = sorted(set(spec) - _SUITE_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown field; choose from {', '.join(sorted(_SUITE_KEYS))}")
    sets_spec = spec.get("sets")
    if not isinstance(sets_spec, dict) or not sets_spec:
        raise _fail(where, "sets", "expected a mapping of set name -> {path, role}")
    spec = {**spec, "name": str(spec.get("name") or where.stem)}
    base = where.parent
    data_root = Path(root).expanduser() if root is not None else (base / str(spec.get("root", "."))).expanduser()
    sets = [_read_set(str(n), e, spec, base, data_root, where) for n, e in sets_spec.items()]
    _head_columns(sets, where)
    return Suite(spec["name"], sets, info={"root": str(data_root), "file": str(where)})
