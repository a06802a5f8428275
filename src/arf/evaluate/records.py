"""Evaluation records: one JSON line per (model, alpha, set, metric), and role averages computed from them.

Records hold per-set numbers only. The ID / domain-shift / zero-shot averages are computed from each record's
``role`` (``id``, ``shift``, ``zeroshot``) whenever they are needed, never from dataset names, so a suite with
other sets averages correctly without code changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arf.errors import InputFileError
from arf.io import atomic_open

# Roles that are averaged, and the column names they get in tables and plots.
AVERAGES: dict[str, str] = {"id": "ID", "shift": "OOD avg", "zeroshot": "zero-shot avg",
                            # the shift / zero-shot val sets' means: what a retention setting is chosen on, never
                            # a result
                            "val-shift": "shift val avg", "val-zeroshot": "zero-shot val avg"}


@dataclass(frozen=True)
class Record:
    """One number: ``value`` (percent) of ``metric`` for ``model`` (method, WiSE-FT ``alpha``) on ``set``.

    Frozen: :func:`read_records` hands the same parsed records to every caller of an unchanged file."""

    model: str
    method: str
    alpha: float | None
    set: str
    role: str
    metric: str
    value: float
    n: int
    config_hash: str
    seed: int | None = None
    # Which head produced the number: "zeroshot" (text head of the model) or "trained" (the checkpoint's head).
    head: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in d and n not in ("seed", "head"))
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        alpha = d.get("alpha")
        seed = d.get("seed")
        return cls(
            model=str(d["model"]),
            method=str(d["method"]),
            alpha=None if alpha is None else float(alpha),
            set=str(d["set"]),
            role=str(d["role"]),
            metric=str(d["metric"]),
            value=float(d["value"]),
            n=int(d["n"]),
            config_hash=str(d["config_hash"]),
            seed=None if seed is None else int(seed),
            head=d.get("head"),
        )


# Parsed files, keyed by path and validated by (device, inode, size, mtime): a WiSE-FT sweep reads its records file
# before every evaluation, and a cached `arf demo --full` re-run did so 374 times on 5,540 records — an eighth of
# its profiled time spent parsing the same unchanged lines. append_records replaces the file (a new inode), so any write
# shows. A few paths at most are kept (the records file, a wise-probe's select.jsonl).
_PARSED: dict[Path, tuple[tuple[int, int, int, int], list[Record]]] = {}
_PARSED_MAX = 8


def read_records(path: str | Path) -> list[Record]:
    """Records from one JSONL file; a bad line is an error naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"records file not found: {p}")
    st = p.stat()
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    key = p.resolve()
    hit = _PARSED.get(key)
    if hit is not None and hit[0] == stamp:
        return list(hit[1])
    out = _parse_records(p)
    _PARSED.pop(key, None)
    while len(_PARSED) >= _PARSED_MAX:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[key] = (stamp, out)
    return list(out)


def _parse_records(p: Path) -> list[Record]:
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError, KeyError) as e:
            raise InputFileError(f"{p}:{i}: not an evaluation record ({e})") from None
    return out


def append_records(path: str | Path, records: Iterable[Record]) -> None:
    """Append ``records`` to a JSONL file, rewriting it atomically so a kill never leaves half a line."""
    p = Path(path)
    old = p.read_text() if p.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    with atomic_open(p, "w") as f:
        f.write(old)
        for r in records:
            f.write(json.dumps(r.to_dict(), sort_keys=True) + "\n")


def alpha_key(alpha: float | None) -> float | None:
    """A WiSE-FT α to group records by: sweeps write α from a float range (0.30000000000000004), which must group
    with a written 0.3."""
    return None if alpha is None else round(alpha, 6)


def dedupe(records: Sequence[Record]) -> list[Record]:
    """Keep the last record per (model, method, alpha, set, metric, seed): re-running an eval replaces numbers."""
    last: dict[tuple, Record] = {}
    for r in records:
        last[(r.model, r.method, r.alpha, r.set, r.metric, r.seed)] = r
    return list(last.values())


def role_averages(records: Sequence[Record], metric: str = "top1") -> dict[str, float]:
    """``{"ID": …, "OOD avg": …, "zero-shot avg": …}`` over the sets of one evaluation, from their roles.

    A role with no set is left out. Each set counts once (unweighted mean over sets, as in the papers).
    """
    by_role: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.metric == metric and r.role in AVERAGES:
            by_role[r.role].append(r.value)
    return {AVERAGES[role]: sum(v) / len(v) for role, v in by_role.items() if v}


def averages_by_run(
    records: Sequence[Record], metric: str = "top1", name: Callable[[Record], str] = lambda r: r.method,
) -> dict[tuple[str, float | None, int | None], dict[str, float]]:
    """Role averages per evaluated run, keyed ``(name(record), alpha_key(alpha), seed)`` over deduplicated records
    of ``metric``; ``name`` maps a record to the row it belongs to (default: its method)."""
    groups: dict[tuple[str, float | None, int | None], list[Record]] = defaultdict(list)
    for r in dedupe(records):
        if r.metric == metric:
            groups[(name(r), alpha_key(r.alpha), r.seed)].append(r)
    return {key: role_averages(rs, metric) for key, rs in groups.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
