"""Data layer: labelled sets, suites, safe image loading, image–text pairs and the offline benchmark."""

from arf.data.assets import list_assets, load_classnames, load_json_asset, load_templates
from arf.data.formats import (
    ROLES,
    LabeledSet,
    ManifestError,
    Pair,
    Suite,
    read_class_folders,
    read_label_manifest,
    read_pairs,
    read_table,
    safe_join,
)
from arf.data.loader import ImageDataset, crop_border, make_loader, skip_collate
from arf.data.suites import SUITES, get_dataset, get_suite, list_suites, offline_root

__all__ = [
    "ROLES",
    "SUITES",
    "ImageDataset",
    "LabeledSet",
    "ManifestError",
    "Pair",
    "Suite",
    "crop_border",
    "get_dataset",
    "get_suite",
    "list_assets",
    "list_suites",
    "load_classnames",
    "load_json_asset",
    "load_templates",
    "make_loader",
    "offline_root",
    "read_class_folders",
    "read_label_manifest",
    "read_pairs",
    "read_table",
    "safe_join",
    "skip_collate",
]
