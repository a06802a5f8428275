"""Which images a stage works on: a finetuning/test set named by a spec string, resolved to paths under a root.

Specs accepted everywhere in the anchor stages (``--images``, ``--exclude``):

- ``suite:<suite>/<set>``: a set of an ``arf.data`` suite (e.g. ``suite:offline/train``), its data read from the
  suite's default location, or ``suite:<suite>/<set>@<data root>`` from another one (see :func:`suite_spec`);
- a ``.parquet`` / ``.csv`` / ``.tsv`` manifest with a ``path`` (or open_clip's ``filepath``) column (relative to
  ``root``; by default the manifest's folder or the nearest ancestor holding the files, as in the offline
  benchmark) and optional ``label``/``classname``;
- an image folder (recursively; in ImageFolder layout ``<class>/<image>`` the sub-folders are the classes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arf.errors import ConfigError, InputFileError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ImageSet:
    """A named list of images (paths relative to ``root``), with class names when the source has them."""

    name: str
    root: Path
    paths: list[str]
    classnames: list[str] | None = None
    labels: list[int] | None = None
    templates: list[str] | None = None
    sha256: list[str] | None = None   # per image, when the manifest records it

    def abs_path(self, rel: str) -> Path:
        return self.root / rel

    def classnames_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.classnames or []).encode()).hexdigest()[:16]


def _from_labeled_set(ls: Any, root: str | Path | None) -> ImageSet:
    base = Path(root or getattr(ls, "root", None) or ".")
    rels = []
    for p in ls.paths:
        p = Path(p)
        rels.append(os.path.relpath(p, base) if p.is_absolute() else str(p))
    return ImageSet(
        name=str(ls.name), root=base, paths=rels, classnames=list(ls.classnames),
        labels=[int(x) for x in ls.labels], templates=list(getattr(ls, "templates", None) or []) or None,
        sha256=list(ls.sha256) if getattr(ls, "sha256", None) is not None else None,
    )


def _find_root(manifest: Path, first: str) -> Path:
    """The folder the manifest's relative paths live under: its own folder or the nearest ancestor."""
    for cand in [manifest.parent, *manifest.parent.parents][:4]:
        if (cand / first).exists():
            return cand
    raise InputFileError(
        f"{manifest}: cannot find its first image {first!r} under {manifest.parent} or its parents; pass --root"
    )


def _from_manifest(path: Path, root: str | Path | None) -> ImageSet:
    from arf.data.formats import PATH_COLUMNS, pick_column, read_table

    rows = read_table(path)  # malformed files fail naming the manifest, not with pyarrow's traceback
    if not rows:
        raise InputFileError(f"{path}: holds no images")
    cols = list(rows[0])
    path_col = pick_column(cols, PATH_COLUMNS)
    if path_col is None:
        raise InputFileError(f"{path}: needs a path column ({' or '.join(PATH_COLUMNS)}); it has {', '.join(cols)}")
    rels = [str(r[path_col]) for r in rows]
    base = Path(root) if root else _find_root(path, rels[0])
    classnames = labels = None
    if "label" in cols and "classname" in cols:
        try:
            labels = [int(r["label"]) for r in rows]
        except (TypeError, ValueError) as e:
            raise InputFileError(f"{path}: column 'label' must hold class indices ({e})") from None
        names: dict[int, str] = {lab: str(r["classname"]) for lab, r in zip(labels, rows, strict=True)}
        classnames = [names.get(i, f"class_{i}") for i in range(max(labels) + 1)]
    sha = [str(r["sha256"]) for r in rows] if "sha256" in cols else None
    return ImageSet(name=path.stem, root=base, paths=rels, classnames=classnames, labels=labels, sha256=sha)


def _from_folder(path: Path) -> ImageSet:
    files = sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise InputFileError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    classnames = labels = None
    parts = [Path(f).parts for f in files]
    if all(len(p) == 2 for p in parts):  # ImageFolder layout
        classnames = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(classnames)}
        labels = [index[p[0]] for p in parts]
    return ImageSet(name=path.name, root=path, paths=files, classnames=classnames, labels=labels)


def resolve_set(spec: Any, root: str | Path | None = None) -> ImageSet:
    """Resolve a set spec (see module docstring) or an ``arf.data.LabeledSet`` into an :class:`ImageSet`."""
    if isinstance(spec, ImageSet):
        return spec
    if not isinstance(spec, (str, Path)):
        return _from_labeled_set(spec, root)
    s = str(spec)
    if s.startswith("suite:"):
        suite_name, set_name, data_root = parse_suite_spec(s)
        import arf.data

        return _from_labeled_set(arf.data.get_suite(suite_name, root=data_root).get(set_name), root)
    p = Path(s).expanduser()
    if p.is_dir():
        return _from_folder(p)
    if p.is_file() and p.suffix.lower() in (".parquet", ".csv", ".tsv"):
        return _from_manifest(p, root)
    if not p.exists():
        raise InputFileError(f"image set not found: {p}")
    raise InputFileError(f"{p}: expected an image folder, a .parquet/.csv/.tsv manifest or suite:<suite>/<set>")


def suite_siblings(spec: str, root: str | Path | None = None) -> list[ImageSet]:
    """Every other set of the suite that ``suite:<suite>/<set>`` names (its val/test sets), else nothing."""
    if not isinstance(spec, str) or not spec.startswith("suite:"):
        return []
    import arf.data

    suite_name, set_name, data_root = parse_suite_spec(spec)
    return [_from_labeled_set(ls, root) for ls in arf.data.get_suite(suite_name, root=data_root).sets
            if ls.name != set_name]


def suite_spec(suite: str, set_name: str, data_root: str | Path | None = None) -> str:
    """The spec of a suite's set: ``suite:<suite>/<set>``, with ``@<data root>`` when its data lives elsewhere than
    the suite's default location (e.g. an offline benchmark built with ``arf data build --out``)."""
    spec = f"suite:{suite}/{set_name}"
    return f"{spec}@{Path(data_root).expanduser().resolve()}" if data_root is not None else spec


def parse_suite_spec(spec: str) -> tuple[str, str, Path | None]:
    """``suite:<suite>/<set>[@<data root>]`` → (suite, set, data root or None for the default location)."""
    # Suite and set names hold no "@", so the first one starts the root (which may itself contain "@").
    body, at, data_root = spec[len("suite:"):].partition("@")
    # The last "/" ends the suite: a suite file's path holds slashes of its own (suite:/data/pets.yaml/train).
    suite_name, _, set_name = body.rpartition("/")
    if not suite_name or not set_name or (at and not data_root):
        raise ConfigError(f"images: {spec!r} must look like suite:<suite>/<set> or suite:<suite>/<set>@<data root>")
    return suite_name, set_name, Path(data_root).expanduser() if at else None
