"""Leak checks on a built benchmark: no image and no design family on both sides of any line.

Lines: alignment | pool | finetuning (train, val, id) | val splits | each test set. Images are compared by sha256
of the file bytes; families by the ``family`` column (one family = one emoji design in any rendering, see
sources.FAMILY).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from arf.errors import ArfError
from arf.io import read_json

FINETUNE_ROLES = ("train", "val", "id")
# Splits for choosing settings on: disjoint in images and families from finetuning, alignment, pool and every test set.
VAL_SPLIT_ROLES = ("val-shift", "val-zeroshot")


class LeakError(ArfError, AssertionError):
    """A built benchmark shares images or design families across splits."""


def _read(root: Path, file: str) -> tuple[set[str], set[str], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(root / file, columns=["sha256", "family"]).to_pydict()
    return set(t["sha256"]), set(t["family"]), list(t["sha256"])


def find_leaks(root: str | Path) -> list[str]:
    """Every violation found, as readable lines (empty list = clean)."""
    root = Path(root)
    meta = read_json(root / "manifest.json")
    groups: dict[str, tuple[set[str], set[str]]] = {}
    problems: list[str] = []
    for name, spec in meta["pairs"].items():
        sha, fam, _ = _read(root, spec["file"])
        groups[name] = (sha, fam)
    for name, spec in meta["sets"].items():
        sha, fam, rows = _read(root, spec["file"])
        if len(rows) != len(sha):
            problems.append(f"{name}: {len(rows) - len(sha)} duplicate images inside the set")
        groups[name] = (sha, fam)
    # A set's side of the lines: finetuning, val split or test.
    side = {n: "finetune" if s["role"] in FINETUNE_ROLES else "val" if s["role"] in VAL_SPLIT_ROLES else "test"
            for n, s in meta["sets"].items()}
    # Images: pairwise disjoint across every group (train vs val vs id included).
    for a, b in combinations(sorted(groups), 2):
        shared = groups[a][0] & groups[b][0]
        if shared:
            problems.append(f"{a} and {b} share {len(shared)} images (sha256 {sorted(shared)[0][:12]}…)")
    # Families: alignment and pool disjoint from each other and from every set; finetuning sets from tests.
    for a, b in combinations(sorted(groups), 2):
        # train/val/id are one distribution by design; test sets may share a family (different classes or
        # renderings, never trained on), and so may val splits; a val split may not share a test set's design.
        if a in side and b in side and side[a] == side[b]:
            continue
        shared = groups[a][1] & groups[b][1]
        if shared:
            problems.append(f"{a} and {b} share design families {sorted(shared)}")
    return problems


def check_disjoint(root: str | Path) -> None:
    problems = find_leaks(root)
    if problems:
        raise LeakError(f"offline benchmark {root} leaks across splits: " + "; ".join(problems))
