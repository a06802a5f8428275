"""scripts/augment_errors.py on arf:tiny-clip and a tiny real offline build (test_data_offline's fixture)."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from arf.errors import ConfigError, InputFileError
from test_data_offline import tiny  # noqa: F401  (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "augment_errors.py"
CELL = re.compile(r"([\d.]+) \((\d+)/(\d+)\)")


def test_error_rates_by_draw_count_every_image_once_per_factor(tiny, tmp_path, monkeypatch):  # noqa: F811
    ns = runpy.run_path(str(SCRIPT))

    sizes = {n: pq.read_table(tiny / f"{n}.parquet").num_rows for n in ("val", "id")}
    md = ns["augment_errors"](["arf:tiny-clip", "arf:tiny-clip"], ["val", "id"], data_root=str(tiny))
    rows = [r for r in md.splitlines() if r.startswith("| ") and not r.startswith("| factor")]
    per_factor: dict[str, list[list[tuple[int, int]]]] = {}
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        factor, shares, rates = cells[0], [float(x) for x in cells[2:4]], cells[4:]
        counts = []
        for c in rates:
            m = CELL.fullmatch(c)
            if m is None:
                assert c == "–"
                counts.append((0, 0))
                continue
            rate, wrong, seen = float(m[1]), int(m[2]), int(m[3])
            assert rate == pytest.approx(100 * wrong / seen, abs=0.05)
            counts.append((wrong, seen))
        if factor != "all":
            per_factor.setdefault(factor, []).append(counts)
        else:
            total, total_shares = counts, shares
    assert set(per_factor) == {"scale", "rotation, abs °", "background", "posterised", "mirrored"}
    # two copies of one model are pooled under its method: every image is seen twice in every factor's bins
    assert "models: zeroshot ×2" in md
    assert [seen for _, seen in total] == [2 * sizes["val"], 2 * sizes["id"]] and total_shares == [100.0, 100.0]
    for factor, bins in per_factor.items():
        assert [sum(b[j][1] for b in bins) for j in range(2)] == [2 * sizes["val"], 2 * sizes["id"]], factor
        assert [sum(b[j][0] for b in bins) for j in range(2)] == [w for w, _ in total], factor

    # a folder that was not rendered by `arf data build` has no draws to recover
    plain = tmp_path / "plain"
    shutil.copytree(tiny, plain)
    meta = json.loads((plain / "manifest.json").read_text())
    meta.pop("config")
    (plain / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=r"manifest.json: no build config"):
        ns["augment_errors"](["arf:tiny-clip"], ["val"], data_root=str(plain))
    with pytest.raises(ConfigError, match=r"--sets: suite 'offline' has no set 'nope'; choose from "):
        ns["augment_errors"](["arf:tiny-clip"], ["nope"], data_root=str(tiny))
    # As a program: the same message on one line, no traceback.
    argv = ["augment_errors.py", "arf:tiny-clip", "--sets", "nope", "--data-root", str(tiny)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=r"^error: --sets: suite 'offline' has no set 'nope'; choose from "):
        runpy.run_path(str(SCRIPT), run_name="__main__")
