"""Result tables from evaluation records: methods × sets plus ID / OOD avg / zero-shot avg, mean ± std over seeds.

Rows: each method at its own weights (records with ``alpha`` None, else its α = 1 sweep point), a ``zeroshot``
row (from α = 0 when no zero-shot evaluation was recorded), and each method's WiSE-FT points at ``wise_alphas``
(one block of rows per α, so methods are compared at the same α).
Replicates are the distinct (seed, model) pairs of a row; averages are computed per replicate from the records'
roles, then their mean and sample std are reported.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arf.data.formats import EVAL_ROLES
from arf.evaluate.records import AVERAGES, Record, dedupe, mean_std, role_averages
from arf.io import atomic_open

log = logging.getLogger(__name__)

ROLE_ORDER = EVAL_ROLES  # display order of the set columns
# Display order of the methods ARF ships (probes, then end-to-end finetuning, then ARF and its ablations; arf-ret
# is the retrieved-anchors-only ablation's name before it became arf's val choice, in older records); any
# other name (a variant, a user's method) follows in the order it was recorded. Without a fixed order a report's
# rows and its plots' colours depended on which run happened to be evaluated first.
METHOD_ORDER = ("zeroshot", "lp", "lpft", "ft", "flyp", "arf", "arf-both", "arf-cap", "arf-ret", "arf-ft", "arf-lpft")


def order_methods(names: Iterable[str]) -> list[str]:
    """``names`` without repeats: those in METHOD_ORDER in that order, then the rest as they came."""
    unique = list(dict.fromkeys(names))
    return [m for m in METHOD_ORDER if m in unique] + [m for m in unique if m not in METHOD_ORDER]


@dataclass
class Cell:
    mean: float
    std: float
    n: int

    def text(self, digits: int = 1) -> str:
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}"


@dataclass
class Row:
    label: str
    method: str
    alpha: float | None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def replicates(self) -> int:
        return max((c.n for c in self.cells.values()), default=0)


@dataclass
class Table:
    metric: str
    columns: list[str]
    rows: list[Row]
    column_roles: dict[str, str]


def same_alpha(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, abs_tol=1e-6)


def set_columns(records: Sequence[Record]) -> tuple[list[str], dict[str, str]]:
    """Set names ordered by role (val, id, shift, zeroshot) then first appearance; their roles."""
    roles: dict[str, str] = {}
    for r in records:
        roles.setdefault(r.set, r.role)
    known = [s for s in roles if roles[s] in ROLE_ORDER]
    order = sorted(known, key=lambda s: ROLE_ORDER.index(roles[s]))
    return order, {s: roles[s] for s in order}


def summarize(records: Sequence[Record], metric: str) -> dict[str, Cell]:
    """Per-set and role-average cells over the replicates (distinct seed, model) in ``records``."""
    reps: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        if r.metric == metric:
            reps[(r.seed, r.model)].append(r)
    seeds = [seed for seed, _ in reps if seed is not None]
    if len(seeds) != len(set(seeds)):
        # Two models with one method and one seed are usually variants (an ablation): give them distinct
        # method names (`arf eval --method arf-cap-only`) or they are averaged as if they were replicates.
        models = sorted({m for _, m in reps})
        log.warning("method %s: %d models share a seed and are averaged together: %s", records[0].method,
                    len(models), ", ".join(models))
    values: dict[str, list[float]] = defaultdict(list)
    for recs in reps.values():
        for r in recs:
            values[r.set].append(r.value)
        for name, v in role_averages(recs, metric).items():
            values[name].append(v)
    return {k: Cell(*mean_std(v), len(v)) for k, v in values.items()}


def endpoint_records(records: Sequence[Record], method: str) -> tuple[float | None, list[Record]]:
    """A method's own model: its alpha-None records, else its α = 1 sweep point."""
    mine = [r for r in records if r.method == method]
    plain = [r for r in mine if r.alpha is None]
    if plain:
        return None, plain
    return 1.0, [r for r in mine if same_alpha(r.alpha, 1.0)]


def build_table(records: Sequence[Record], metric: str = "top1", wise_alphas: Sequence[float] = (0.5,)) -> Table:
    records = dedupe(records)
    columns, roles = set_columns(records)
    methods = order_methods(r.method for r in records)
    rows: list[Row] = []
    if "zeroshot" not in methods:
        alpha0 = [r for r in records if same_alpha(r.alpha, 0.0)]
        if alpha0:
            # Every sweep's α = 0 point is the same zero-shot model; one replicate set is enough.
            first = alpha0[0].method
            rows.append(Row("zeroshot", "zeroshot", 0.0, summarize([r for r in alpha0 if r.method == first],
                                                                    metric)))
    for m in methods:
        alpha, recs = endpoint_records(records, m)
        if recs:
            rows.append(Row(m, m, alpha, summarize(recs, metric)))
    # α 0 and 1 are the zeroshot row and each method's own row above.
    for a in (a for a in wise_alphas if 0.0 < a < 1.0):
        for m in methods:
            recs = [r for r in records if r.method == m and same_alpha(r.alpha, a)]
            if recs:
                rows.append(Row(f"{m} + WiSE-FT (α={a:g})", m, a, summarize(recs, metric)))
    rows = [r for r in rows if r.cells]
    avg_cols = [name for role, name in AVERAGES.items() if any(name in r.cells for r in rows)]
    roles.update({name: "avg" for name in avg_cols})
    return Table(metric=metric, columns=columns + avg_cols, rows=rows, column_roles=roles)


def to_markdown(table: Table, digits: int = 1) -> str:
    """A GitHub markdown table; ``–`` where a row has no value for a column."""
    header = ["method", *table.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for row in table.rows:
        cells = [row.cells[c].text(digits) if c in row.cells else "–" for c in table.columns]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    reps = sorted({r.replicates for r in table.rows})
    note = (f"{table.metric} accuracy (%); mean ± sample std over {'/'.join(map(str, reps))} seeds where more "
            "than one" if reps and reps[-1] > 1 else f"{table.metric} accuracy (%), one seed")
    roles = ", ".join(f"{c} ({table.column_roles[c]})" for c in table.columns if table.column_roles[c] != "avg")
    return "\n".join([*lines, "", f"{note}. Sets and roles: {roles}.", ""])


def write_csv(table: Table, path: str | Path) -> None:
    """Wide CSV: one row per table row; ``<column>`` is the mean, ``<column> std`` and ``<column> n`` beside it."""
    header = ["method", "alpha"]
    for c in table.columns:
        header += [c, f"{c} std", f"{c} n"]
    with atomic_open(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in table.rows:
            out: list[object] = [row.label, "" if row.alpha is None else row.alpha]
            for c in table.columns:
                cell = row.cells.get(c)
                out += [f"{cell.mean:.4f}", f"{cell.std:.4f}", cell.n] if cell else ["", "", ""]
            w.writerow(out)
