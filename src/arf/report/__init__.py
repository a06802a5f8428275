"""Reports from evaluation records: a markdown table, a CSV and WiSE-FT curve plots.

```python
result = build_report(collect_records(["runs/"]), "report/")
print(result.markdown_path.read_text())
```
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arf.errors import ConfigError, InputFileError
from arf.evaluate.records import Record, read_records
from arf.io import atomic_open, write_json
from arf.report.plots import curve_points, plot_curves
from arf.report.tables import Table, build_table, to_markdown, write_csv

log = logging.getLogger(__name__)

__all__ = ["ReportResult", "build_report", "collect_records", "merge_seed_names", "rename_methods", "seedless_method",
           "select_methods"]


def collect_records(inputs: Sequence[str | Path]) -> list[Record]:
    """Records from JSONL files and from every ``*records*.jsonl`` under the given folders (run dirs).

    Training's ``metrics.jsonl`` is not a records file and is never picked up by the folder search.
    """
    records: list[Record] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.jsonl") if "records" in f.name)
            if not files:
                raise InputFileError(f"{p}: no *records*.jsonl file found under this folder")
        elif p.is_file():
            files = [p]
        else:
            raise InputFileError(f"{p}: no such file or folder")
        for f in files:
            records.extend(read_records(f))
    if not records:
        raise InputFileError(f"no evaluation records in {', '.join(map(str, inputs))}")
    return records


def rename_methods(records: Sequence[Record], renames: Mapping[str, str]) -> list[Record]:
    """Records with their method renamed by ``renames`` (old → new, applied at once, so names can swap).

    Reports are read-only views: the JSONL files keep the names they were recorded under. A new name that
    another method already has merges the two (their runs become replicates of one row): that is logged.
    """
    have = sorted({r.method for r in records})
    missing = [old for old in renames if old not in have]
    if missing:
        raise ConfigError(f"--rename: no records of method {missing[0]!r}; the records hold {', '.join(have)}")
    kept = set(have) - set(renames)
    for old, new in renames.items():
        if new in kept:
            log.warning("--rename %s=%s: method %r has records already; the two are merged", old, new, new)
    return [dataclasses.replace(r, method=renames.get(r.method, r.method)) for r in records]


def seedless_method(r: Record) -> str:
    """``arf-s1`` recorded with seed 1 -> ``arf``: runs named after their seed (``scripts/offline_variant.sh``'s
    ``<name>-s<seed>``) are replicates of one method. Any other name (``arf-s3`` with seed 0) stays as it is."""
    m = re.fullmatch(r"(.+)-s(\d+)", r.method)
    return m.group(1) if m and r.seed is not None and int(m.group(2)) == r.seed else r.method


def merge_seed_names(records: Sequence[Record]) -> list[Record]:
    """Records with each method named by :func:`seedless_method`, so that one row holds every seed."""
    return [dataclasses.replace(r, method=seedless_method(r)) for r in records]


def select_methods(records: Sequence[Record], methods: Sequence[str]) -> list[Record]:
    """The records of ``methods`` (after any renaming) and of ``zeroshot``, where every WiSE-FT curve starts."""
    have = sorted({r.method for r in records})
    unknown = [m for m in methods if m not in have]
    if unknown:
        raise ConfigError(f"--methods: no records of method {unknown[0]!r}; choose from {', '.join(have)}")
    keep = {*methods, "zeroshot"}
    return [r for r in records if r.method in keep]


@dataclass
class ReportResult:
    table: Table
    markdown_path: Path
    csv_path: Path
    plots: dict[str, Path] = field(default_factory=dict)
    curves: dict[str, int] = field(default_factory=dict)


PLOTS = {
    # file stem: (y column, y label, title)
    "wise_id_vs_ood": ("OOD avg", "domain-shift average accuracy (%)", "WiSE-FT: ID vs domain shift"),
    "wise_id_vs_zeroshot": ("zero-shot avg", "zero-shot average accuracy (%)", "WiSE-FT: ID vs zero-shot"),
}


def build_report(
    records: Sequence[Record], out_dir: str | Path, metric: str = "top1", wise_alphas: Sequence[float] = (0.5,)
) -> ReportResult:
    """Write ``results.md``, ``results.csv``, ``summary.json`` and the curve PNGs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(records, metric=metric, wise_alphas=wise_alphas)
    md = out / "results.md"
    with atomic_open(md) as f:
        f.write(to_markdown(table))
    csv_path = out / "results.csv"
    write_csv(table, csv_path)
    result = ReportResult(table=table, markdown_path=md, csv_path=csv_path)
    for stem, (ycol, ylabel, title) in PLOTS.items():
        pts = curve_points(records, x="ID", y=ycol, metric=metric)
        if not pts:
            log.info("no records with both ID and %s: %s.png not drawn", ycol, stem)
            continue
        path = out / f"{stem}.png"
        result.curves[stem] = plot_curves(pts, path, f"ID accuracy (%), {metric}", ylabel, title)
        result.plots[stem] = path
    write_json(out / "summary.json", {
        "metric": metric,
        "columns": table.columns,
        "rows": [{"label": r.label, "method": r.method, "alpha": r.alpha,
                  "cells": {k: vars(c) for k, c in r.cells.items()}} for r in table.rows],
        "plots": {k: str(v) for k, v in result.plots.items()},
    })
    return result
