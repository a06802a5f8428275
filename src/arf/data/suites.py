"""Named evaluation suites: ``offline`` (built here) and user-data suites (``imagenet``, ``imagenet-shift``,
``zeroshot-10``) that point at folders the user has on disk.

Layout expected under a user-data root (each dataset: one folder per class, or a ``manifest.csv``/``.parquet``
with ``path,label`` beside the class folders)::

    <root>/imagenet/val/<wnid>/*.JPEG          <root>/imagenet-a/<wnid>/*        <root>/imagenet-r/<wnid>/*
    <root>/imagenetv2/<0..999>/*               <root>/imagenet-sketch/<wnid>/*   <root>/objectnet/<folder>/*
    <root>/<dataset>/<class folder>/*  for zeroshot-10 (folders sorted = label order of the class-name asset)

The default root is ``$ARF_DATA`` (``arf.paths.data_dir()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arf.data.assets import load_classnames, load_json_asset, load_templates
from arf.data.formats import LabeledSet, Suite, read_class_folders, read_label_manifest
from arf.errors import ConfigError, InputFileError
from arf.io import read_json
from arf.paths import data_dir
from arf.registry import Registry

log = logging.getLogger(__name__)

SuiteBuilder = Callable[[Path | None], Suite]
SUITES: Registry[SuiteBuilder] = Registry("suite")

OFFLINE_VERSION = "v1"


def get_suite(name: str, root: str | Path | None = None) -> Suite:
    """The suite ``name`` (``unknown suite 'x'; choose from …`` otherwise), its data read from ``root``."""
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
        info={"families": spec.get("families", []), "suite": "offline"},
    )


@SUITES.register("offline")
def offline_suite(root: Path | None = None) -> Suite:
    """The offline benchmark built by ``arf data build`` (train/val/id/shift/zeroshot sets)."""
    root = root or offline_root()
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise InputFileError(f"offline benchmark not found at {root} (no manifest.json); run `arf data build` first")
    meta = read_json(manifest)
    sets = [load_offline_set(root, name, spec) for name, spec in meta["sets"].items()]
    order = {r: i for i, r in enumerate(("train", "val", "id", "shift", "zeroshot"))}
    sets.sort(key=lambda s: (order[s.role], s.name))
    return Suite("offline", sets, info={"root": str(root), "version": meta.get("version")})


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


def _dataset_dir(root: Path | None, subdir: str) -> Path:
    return (root if root is not None else data_dir()) / subdir


def load_folder_set(spec: FolderSpec, root: Path | None) -> LabeledSet:
    d = _dataset_dir(root, spec.subdir)
    classnames = load_classnames(spec.classnames)
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
    FolderSpec(n, n, "zeroshot", n, n)
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
USER_SPECS = {s.name: s for s in (IMAGENET, *IMAGENET_SHIFT, *ZEROSHOT_10)}


def _user_suite(name: str, specs: tuple[FolderSpec, ...]) -> SuiteBuilder:
    def build(root: Path | None = None) -> Suite:
        sets, missing = [], []
        for spec in specs:
            try:
                sets.append(load_folder_set(spec, root))
            except InputFileError as e:
                missing.append(str(e))
        if not sets:
            raise InputFileError(f"suite {name!r}: no dataset found; {'; '.join(missing)}")
        for m in missing:
            log.warning("suite %s: %s (skipped)", name, m)
        return Suite(name, sets, info={"root": str(root or data_dir()), "missing": missing})

    build.__doc__ = f"User-data suite {name}: {', '.join(s.name for s in specs)}."
    return build


SUITES.register("imagenet", _user_suite("imagenet", (IMAGENET,)))
SUITES.register("imagenet-shift", _user_suite("imagenet-shift", IMAGENET_SHIFT))
SUITES.register("zeroshot-10", _user_suite("zeroshot-10", ZEROSHOT_10))


def get_dataset(name: str, root: str | Path | None = None) -> LabeledSet:
    """One user dataset by name (e.g. ``imagenet-a``)."""
    if name not in USER_SPECS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(sorted(USER_SPECS))}")
    return load_folder_set(USER_SPECS[name], Path(root) if root is not None else None)
