"""A zero-shot *validation* split of the offline benchmark: the held-out concepts in the base's own designs.

The benchmark's val set measures in-distribution accuracy only, so a setting chosen on it can trade away zero-shot
retention unseen. Tuning for retention on the zero-shot test sets would leak them. This split asks the same
questions — the 200 held-out emoji classes and the 249 countries, with the test sets' class names and templates —
on images of the alignment corpus (the base's pretraining pairs): Noto and Twemoji renders of the held-out emoji,
circle-flags and flagpack renders of the flags. No test image or test design is read; the test sets' parquet files
are opened for their class lists only (path stem -> class name), which are part of the task definition.

What it measures is *forgetting of what the base learned*: the base scores high here because it was aligned on
these very images, and a finetuned model is read by how much of that it keeps. It is not an estimate of test
zero-shot accuracy (docs/RESULTS.md §2 compares its ranking of finetuned models with the test sets').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arf.data.formats import LabeledSet
from arf.errors import InputFileError
from arf.io import read_json

ROLE = "val-zeroshot"

# val set name -> (the zero-shot test set whose classes it asks, the alignment design folders it reads)
ZEROSHOT_VAL_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "val-zs-emoji": ("zs-emoji", ("noto", "twemoji")),
    "val-zs-flags": ("zs-flags", ("circle-flags", "flagpack")),
}
# One render per concept and design: the first of the build's jittered renders (``<stem>_0.png``).
RENDER = "_0"


def _class_stems(root: Path, spec: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The test set's class names (label order) and ``{image path stem: label}`` from its path/classname columns."""
    import pyarrow.parquet as pq

    classnames = list(read_json(root / spec["classnames"]))
    index = {c: i for i, c in enumerate(classnames)}
    table = pq.read_table(root / spec["file"], columns=["path", "classname"]).to_pydict()
    return classnames, {Path(p).stem: index[c] for p, c in zip(table["path"], table["classname"], strict=True)}


def zeroshot_val_sets(root: Path, meta: dict[str, Any]) -> list[LabeledSet]:
    """The ``val-zeroshot`` sets of a built benchmark (``meta`` is its manifest)."""
    import pyarrow.parquet as pq

    have = set(pq.read_table(root / "alignment.parquet", columns=["path"]).column("path").to_pylist())
    out = []
    for name, (test_set, folders) in ZEROSHOT_VAL_SETS.items():
        if test_set not in meta["sets"]:
            raise InputFileError(f"{root / 'manifest.json'}: no set {test_set!r}, which {name} takes its classes from")
        spec = meta["sets"][test_set]
        classnames, stems = _class_stems(root, spec)
        paths, labels = [], []
        for folder in folders:
            for stem, label in sorted(stems.items()):
                path = f"images/alignment/{folder}/{stem}{RENDER}.png"
                if path in have:  # a design may lack a concept (flagpack has 248 of the 249 countries)
                    paths.append(path)
                    labels.append(label)
        if not paths:
            raise InputFileError(f"{root / 'alignment.parquet'}: no {'/'.join(folders)} render of any {test_set} "
                                 "class; the benchmark predates the flag designs (rebuild with `arf data build`)")
        out.append(LabeledSet(
            name=name, role=ROLE, classnames=classnames, templates=list(spec["templates"]), paths=paths,
            labels=labels, root=str(root),
            info={"families": sorted(folders), "suite": "offline-val", "classes_of": test_set,
                  "content_sha256": meta.get("pairs", {}).get("alignment", {}).get("sha256")}))
    return out
