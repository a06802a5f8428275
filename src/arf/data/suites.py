"""Named evaluation suites: ``offline`` (built here) and user-data suites (``imagenet``, ``imagenet-shift``,
``zeroshot-10``) that point at folders the user has on disk.

Layout expected under a user-data root (each dataset: one folder per class, or a ``manifest.csv``/``.parquet``
with ``path,label`` beside the class folders)::

    <root>/imagenet/val/<wnid>/*.JPEG          <root>/imagenet-a/<wnid>/*        <root>/imagenet-r/<wnid>/*
    <root>/imagenet/heldout/<wnid>/*  (optional: the val split `arf data holdout` moves out of imagenet/train)
    <root>/imagenetv2/<0..999>/*               <root>/imagenet-sketch/<wnid>/*
    <root>/objectnet/images/<folder>/*  + <root>/objectnet/mappings/*.json (as in the ObjectNet release)
    <root>/<dataset>/<class folder>/*  for zeroshot-10 (folders sorted = label order of the class-name asset)

The default root is ``$ARF_DATA`` (``arf.paths.data_dir()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from arf.data.assets import list_assets, load_classnames, load_json_asset, load_templates
from arf.data.formats import (
    ROLES,
    LabeledSet,
    Suite,
    class_folder_names,
    folder_classname,
    read_class_folders,
    read_label_manifest,
)
from arf.errors import ConfigError, InputFileError
from arf.io import read_json
from arf.paths import data_dir
from arf.registry import Registry

log = logging.getLogger(__name__)

SuiteBuilder = Callable[[Path | None], Suite]
SUITES: Registry[SuiteBuilder] = Registry("suite")

OFFLINE_VERSION = "v1"


def get_suite(name: str, root: str | Path | None = None) -> Suite:
    """The suite ``name`` (``unknown suite 'x'; choose from …`` otherwise), its data read from ``root``; a path
    ending in ``.yaml`` / ``.yml`` is a suite file of your own sets (:mod:`arf.data.suite_file`)."""
    from arf.data.suite_file import is_suite_file, load_suite_file

    if is_suite_file(name):
        return load_suite_file(name, root)
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(list_suites())}, "
                          f"or a suite file of your own sets (.yaml)")
    builder = SUITES.get(name)
    return builder(Path(root).expanduser() if root is not None else None)


def list_suites() -> list[str]:
    return SUITES.names()


# ---------------------------------------------------------------------------------------------------------------
# offline benchmark


def offline_root(version: str = OFFLINE_VERSION) -> Path:
    return data_dir() / "offline" / version


def load_offline_set(root: Path, name: str, spec: dict) -> LabeledSet:
    import pyarrow.parquet as pq

    table = pq.read_table(root / spec["file"], columns=["path", "label"]).to_pydict()
    classnames = read_json(root / spec["classnames"])
    return LabeledSet(
        name=name,
        role=spec["role"],
        classnames=list(classnames),
        templates=list(spec["templates"]),
        paths=list(table["path"]),
        labels=[int(x) for x in table["label"]],
        root=str(root),
        reference=spec.get("reference"),
        class_mask=spec.get("class_mask"),
        # The set's table holds every image's sha256: evaluation caches key on it (set_fingerprint).
        info={"families": spec.get("families", []), "suite": "offline", "content_sha256": spec.get("sha256")},
    )


def _read_offline(root: Path | None) -> tuple[Path, dict]:
    """The offline benchmark's root and manifest (read once per suite: it lists every file, ~2 MB)."""
    root = root or offline_root()
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise InputFileError(f"offline benchmark not found at {root} (no manifest.json); run `arf data build` first")
    return root, read_json(manifest)


def _offline_sets(root: Path, meta: dict, roles: Sequence[str] | None = None) -> list[LabeledSet]:
    """The manifest's sets (only those whose role is in ``roles``, if given: the others' tables are not read), in
    role then name order."""
    sets = [load_offline_set(root, name, spec) for name, spec in meta["sets"].items()
            if roles is None or spec["role"] in roles]
    return sorted(sets, key=lambda s: (ROLES.index(s.role), s.name))


@SUITES.register("offline")
def offline_suite(root: Path | None = None) -> Suite:
    """The offline benchmark built by ``arf data build`` (train/val/id/shift/zeroshot sets)."""
    from arf.data.offline.checks import VAL_SPLIT_ROLES

    root, meta = _read_offline(root)
    roles = [r for r in ROLES if r not in VAL_SPLIT_ROLES]  # the val splits are offline-val's
    return Suite("offline", _offline_sets(root, meta, roles), info={"root": str(root), "version": meta.get("version")})


@SUITES.register("offline-val")
def offline_val_suite(root: Path | None = None) -> Suite:
    """The sets to choose hyperparameters on: ``val`` (ID), the ``val-shift`` sets (the finetuning classes in the
    base's other designs) and the ``val-zeroshot`` sets (the held-out concepts), asked on the base's own alignment
    images (``arf.data.offline.val_splits``) and, in the build's ``val-*-unseen`` sets, in two designs no split
    uses. No test set."""
    from arf.data.offline.checks import VAL_SPLIT_ROLES
    from arf.data.offline.val_splits import val_sets

    root, meta = _read_offline(root)
    # val and the built val splits (val-*-unseen), then those asked on the alignment corpus's images.
    sets = _offline_sets(root, meta, roles=("val", *VAL_SPLIT_ROLES)) + val_sets(root, meta)
    sets.sort(key=lambda s: (ROLES.index(s.role), s.name))
    return Suite("offline-val", sets, info={"root": str(root), "version": meta.get("version")})


# ---------------------------------------------------------------------------------------------------------------
# user-data suites


@dataclass(frozen=True)
class FolderSpec:
    """How one user dataset is laid out: its folder, the class-name asset, templates and folder order."""

    name: str
    subdir: str
    role: str
    classnames: str
    templates: str
    # Asset with the class folder names in label order (e.g. ImageNet wnids); None = sorted folder names.
    folders: str | None = None
    # For ImageNetV2: folders are "0".."999" (label indices as names).
    index_folders: bool = False
    reference: str | None = None
    class_mask: str | None = None
    label_map: str | None = None
    border_crop: int = 0
    # A set the user makes only when wanted (``arf data holdout``): its absence is not worth a warning.
    optional: bool = False


def _dataset_dir(root: Path | None, subdir: str) -> Path:
    return (root if root is not None else data_dir()) / subdir


def folder_classnames(d: Path) -> list[str]:
    """Class names from folder names ("Black_footed_Albatross" -> "black footed albatross")."""
    if not d.is_dir():
        raise InputFileError(f"dataset folder {d} does not exist (pass --data-root / root=)")
    # The order read_class_folders gives the labels (numeric for digit names: "2" before "10").
    return [folder_classname(n) for n in class_folder_names(d)]


def _match_lemma(name: str, lemmas: list[str]) -> int | None:
    """Index of an ImageNet class given its label string (full WordNet lemma, or its first synonym)."""
    name = name.strip().lower()
    for i, lem in enumerate(lemmas):
        if lem.lower() == name:
            return i
    hits = [i for i, lem in enumerate(lemmas) if lem.split(",")[0].strip().lower() == name]
    return hits[0] if len(hits) == 1 else None


def objectnet_set(spec: FolderSpec, root: Path | None) -> LabeledSet:
    """ObjectNet with the mapping files of its own release (``<dir>/mappings/``): the 113 classes that map to
    ImageNet-1k, ``label_map`` into ImageNet indices, 1-px border crop.

    ``folder_to_objectnet_label.json`` names each image folder; ``objectnet_to_imagenet_1k.json`` gives each
    ObjectNet class its ImageNet label strings separated by ``"; "`` (matched to WordNet lemmas, so the
    result does not depend on which ImageNet index order the release used).
    """
    d = _dataset_dir(root, spec.subdir)
    maps = d / "mappings"
    folder_json, o2i_json = maps / "folder_to_objectnet_label.json", maps / "objectnet_to_imagenet_1k.json"
    for f in (folder_json, o2i_json):
        if not f.is_file():
            raise InputFileError(f"objectnet: {f} is missing (it ships with the ObjectNet release)")
    folder_to_label: dict[str, str] = read_json(folder_json)
    o2i: dict[str, str] = read_json(o2i_json)
    lemmas = list(load_json_asset("imagenet_lemmas"))
    classnames = sorted(o2i)
    label_map: dict[int, list[int]] = {}
    for c, name in enumerate(classnames):
        idx = []
        for target in o2i[name].split(";"):
            i = _match_lemma(target, lemmas)
            if i is None:
                raise ConfigError(
                    f"{o2i_json}: ImageNet class {target.strip()!r} (for {name!r}) is not an ImageNet-1k label"
                )
            idx.append(i)
        label_map[c] = sorted(set(idx))
    index = {n: i for i, n in enumerate(classnames)}
    images = d / "images" if (d / "images").is_dir() else d
    folders = sorted(f for f, lab in folder_to_label.items() if lab in index)
    paths, labels, _ = read_class_folders(images, folders=folders)
    labels = [index[folder_to_label[folders[lab]]] for lab in labels]
    return LabeledSet(
        name=spec.name,
        role=spec.role,
        classnames=[n.lower() for n in classnames],
        templates=load_templates(spec.templates),
        paths=paths,
        labels=labels,
        root=str(images),
        label_map=label_map,
        reference=spec.reference,
        border_crop=spec.border_crop,
    )


def load_folder_set(spec: FolderSpec, root: Path | None) -> LabeledSet:
    if spec.name == "objectnet":
        return objectnet_set(spec, root)
    d = _dataset_dir(root, spec.subdir)
    if spec.classnames in list_assets("classnames"):
        classnames = load_classnames(spec.classnames)
    else:
        # No shipped list for this dataset (see docs/DATA.md): the folder names are the class names.
        classnames = folder_classnames(d)
    manifest = next((d / m for m in ("manifest.parquet", "manifest.csv") if (d / m).is_file()), None)
    if manifest is not None:
        paths, labels = read_label_manifest(manifest, classnames, root=d)
    else:
        if not d.is_dir():
            raise InputFileError(f"{spec.name}: dataset folder {d} does not exist (pass --data-root / root=)")
        if spec.index_folders:
            folders: list[str] | None = [str(i) for i in range(len(classnames))]
        elif spec.folders is not None:
            folders = list(load_json_asset(spec.folders))
        else:
            folders = None
        paths, labels, _ = read_class_folders(d, classnames, folders)
    mask = list(load_json_asset(spec.class_mask)) if spec.class_mask else None
    label_map = None
    if spec.label_map:
        raw = load_json_asset(spec.label_map)
        label_map = {int(k): [int(v) for v in vs] for k, vs in raw.items()}
    return LabeledSet(
        name=spec.name,
        role=spec.role,
        classnames=classnames,
        templates=load_templates(spec.templates),
        paths=paths,
        labels=labels,
        root=str(d),
        class_mask=mask,
        label_map=label_map,
        reference=spec.reference,
        border_crop=spec.border_crop,
    )


IMAGENET = FolderSpec(
    "imagenet", "imagenet/val", "id", "imagenet", "imagenet", folders="imagenet_wnids", reference="imagenet"
)
# The val split held out of ImageNet train by `arf data holdout` (ImageNet's own val set is the ID test set).
IMAGENET_HELDOUT = FolderSpec("imagenet-heldout", "imagenet/heldout", "val", "imagenet", "imagenet",
                              folders="imagenet_wnids", reference="imagenet", optional=True)
IMAGENET_SHIFT = (
    FolderSpec("imagenet-v2", "imagenetv2", "shift", "imagenet", "imagenet", index_folders=True, reference="imagenet"),
    FolderSpec(
        "imagenet-sketch",
        "imagenet-sketch",
        "shift",
        "imagenet",
        "imagenet",
        folders="imagenet_wnids",
        reference="imagenet",
    ),
    FolderSpec(
        "imagenet-a",
        "imagenet-a",
        "shift",
        "imagenet_a",
        "imagenet",
        folders="imagenet_a_wnids",
        reference="imagenet",
        class_mask="imagenet_a_mask",
    ),
    FolderSpec(
        "imagenet-r",
        "imagenet-r",
        "shift",
        "imagenet_r",
        "imagenet",
        folders="imagenet_r_wnids",
        reference="imagenet",
        class_mask="imagenet_r_mask",
    ),
    FolderSpec(
        "objectnet",
        "objectnet",
        "shift",
        "objectnet",
        "imagenet",
        folders="objectnet_folders",
        reference="imagenet",
        label_map="objectnet_to_imagenet",
        border_crop=1,
    ),
)
ZEROSHOT_10 = tuple(
    FolderSpec(n, n, "zeroshot", n, n if n in list_assets("templates") else "generic")
    for n in (
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "flowers102",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    )
)
USER_SPECS = {s.name: s for s in (IMAGENET, IMAGENET_HELDOUT, *IMAGENET_SHIFT, *ZEROSHOT_10)}


def _user_suite(name: str, specs: tuple[FolderSpec, ...]) -> SuiteBuilder:
    def build(root: Path | None = None) -> Suite:
        sets, missing = [], []
        for spec in specs:
            try:
                sets.append(load_folder_set(spec, root))
            except InputFileError as e:
                if spec.optional:
                    log.info("suite %s: %s (optional; skipped)", name, e)
                else:
                    missing.append(str(e))
        if not sets:
            raise InputFileError(f"suite {name!r}: no dataset found; {'; '.join(missing)}")
        for m in missing:
            log.warning("suite %s: %s (skipped)", name, m)
        return Suite(name, sets, info={"root": str(root or data_dir()), "missing": missing})

    build.__doc__ = f"User-data suite {name}: {', '.join(s.name for s in specs)}."
    return build


SUITES.register("imagenet", _user_suite("imagenet", (IMAGENET, IMAGENET_HELDOUT)))
SUITES.register("imagenet-shift", _user_suite("imagenet-shift", IMAGENET_SHIFT))
SUITES.register("zeroshot-10", _user_suite("zeroshot-10", ZEROSHOT_10))


def get_dataset(name: str, root: str | Path | None = None) -> LabeledSet:
    """One user dataset by name (e.g. ``imagenet-a``)."""
    if name not in USER_SPECS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(sorted(USER_SPECS))}")
    return load_folder_set(USER_SPECS[name], Path(root) if root is not None else None)
