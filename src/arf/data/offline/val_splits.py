"""The offline benchmark's *validation* splits beyond ``val``: questions of the test sets asked on the base's own
alignment images, so that a setting can be chosen for retention without reading any test image.

``val`` measures in-distribution accuracy only, so a setting chosen on it can trade away robustness unseen, and
tuning on the shift or zero-shot test sets would leak them. Two more splits ask the test sets' questions — their
class names and templates — on alignment-corpus images (the base's pretraining pairs):

* ``val-shift`` — the 300 finetuning classes in the base's other designs: Noto and Twemoji colour renders
  (``val-shift-colour``) and Symbola's black-and-white glyphs (``val-shift-glyph``), as the shift test sets show
  the same classes in unseen Fluent 3D / line-art designs and photos. Scored with the finetuned head where a
  method has one (same label space as ``train``).
* ``val-zeroshot`` — the 200 held-out emoji classes (Noto and Twemoji renders) and the 249 countries
  (circle-flags and flagpack renders), with the ``zs-emoji`` / ``zs-flags`` class lists.

The build adds one more set of each role, ``val-shift-unseen`` and ``val-zs-unseen``, in two emoji designs no split
uses (FxEmoji and Streamline; ``build.py``): tables of the benchmark like the test sets, read by suite
``offline-val`` only, and not flattering to anchors drawn from the alignment corpus as the sets here are.

No test image or test design is read; the train and test sets' parquet files are opened for their class lists
only (path stem -> class name), which are part of the task definition. What both measure is *forgetting of what
the base learned*: the base scores high here because it was aligned on these very images, and a finetuned model
is read by how much of that it keeps. Neither is an estimate of test accuracy (docs/RESULTS.md §2 compares their
rankings of finetuned models with the test sets').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arf.data.formats import LabeledSet
from arf.data.offline.checks import FINETUNE_ROLES, VAL_SPLIT_ROLES
from arf.errors import InputFileError
from arf.io import read_json

SHIFT_ROLE, ZEROSHOT_ROLE = VAL_SPLIT_ROLES

# val set name -> (role, the benchmark set whose classes it asks, the alignment design folders it reads)
VAL_SETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "val-shift-colour": (SHIFT_ROLE, "train", ("noto", "twemoji")),
    "val-shift-glyph": (SHIFT_ROLE, "train", ("symbola",)),
    "val-zs-emoji": (ZEROSHOT_ROLE, "zs-emoji", ("noto", "twemoji")),
    "val-zs-flags": (ZEROSHOT_ROLE, "zs-flags", ("circle-flags", "flagpack")),
}
# One render per concept and design: the first of the build's jittered renders (``<stem>_0.png``).
RENDER = "_0"


def _concept(path: str, role: str) -> str:
    """The concept an image shows, from its file name: ``1f6a1`` for test images (``1f6a1.png``) and for the
    finetuning sets' random draws (``1f6a1_3.png``; ``_k`` numbers the draw)."""
    stem = Path(path).stem
    return stem.rsplit("_", 1)[0] if role in FINETUNE_ROLES else stem


def _class_stems(root: Path, spec: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The set's class names (label order) and ``{concept stem: label}`` from its path/classname columns."""
    import pyarrow.parquet as pq

    classnames = list(read_json(root / spec["classnames"]))
    index = {c: i for i, c in enumerate(classnames)}
    table = pq.read_table(root / spec["file"], columns=["path", "classname"]).to_pydict()
    stems: dict[str, int] = {}
    for p, c in zip(table["path"], table["classname"], strict=True):
        stem = _concept(p, spec["role"])
        if stems.setdefault(stem, index[c]) != index[c]:
            raise InputFileError(f"{root / spec['file']}: {stem!r} is labelled both {classnames[stems[stem]]!r} "
                                 f"and {c!r}")
    return classnames, stems


def val_sets(root: Path, meta: dict[str, Any]) -> list[LabeledSet]:
    """The ``val-shift`` and ``val-zeroshot`` sets of a built benchmark (``meta`` is its manifest)."""
    import pyarrow.parquet as pq

    have = set(pq.read_table(root / "alignment.parquet", columns=["path"]).column("path").to_pylist())
    classes_of: dict[str, tuple[list[str], dict[str, int]]] = {}  # read once per source set (train serves two)
    out = []
    for name, (role, source, folders) in VAL_SETS.items():
        if source not in meta["sets"]:
            raise InputFileError(f"{root / 'manifest.json'}: no set {source!r}, which {name} takes its classes from")
        spec = meta["sets"][source]
        if source not in classes_of:
            classes_of[source] = _class_stems(root, spec)
        classnames, stems = classes_of[source]
        paths, labels = [], []
        for folder in folders:
            for stem, label in sorted(stems.items()):
                path = f"images/alignment/{folder}/{stem}{RENDER}.png"
                if path in have:  # a design may lack a concept (flagpack has 248 of the 249 countries)
                    paths.append(path)
                    labels.append(label)
        if not paths:
            raise InputFileError(f"{root / 'alignment.parquet'}: no {'/'.join(folders)} render of any {source} "
                                 "class; the benchmark predates these designs (rebuild with `arf data build`)")
        out.append(LabeledSet(
            name=name, role=role, classnames=classnames, templates=list(spec["templates"]), paths=paths,
            labels=labels, root=str(root),
            info={"families": sorted(folders), "suite": "offline-val", "classes_of": source,
                  "content_sha256": meta.get("pairs", {}).get("alignment", {}).get("sha256")}))
    return out
