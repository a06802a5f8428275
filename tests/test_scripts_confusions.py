"""scripts/confusions.py on arf:tiny-clip and the tiny offline-layout suite of test_evaluate_cli."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from arf.errors import ConfigError
from test_evaluate_cli import bench, finetuned  # noqa: F401  (fixtures)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "confusions.py"


def test_confusions_lists_every_error_with_the_head_arf_eval_would_use(bench, finetuned):  # noqa: F811
    confusions = runpy.run_path(str(SCRIPT))["confusions"]
    md = confusions(str(finetuned), "offline", ["train", "zs"], top=100, data_root=str(bench))
    # train's classes are the checkpoint's trained head's; zs (other classes) is read zero-shot.
    assert "## train (trained head)" in md and "## zs (zero-shot head)" in md
    for block in md.split("## ")[1:]:
        m = re.search(r"top-1 ([\d.]+) % of (\d+); (\d+) errors in (\d+) of (\d+) classes", block)
        assert m, block
        acc, n, errors, classes, total = float(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5])
        assert acc == pytest.approx(100 * (n - errors) / n, abs=0.05)
        pairs = [int(x) for x in re.findall(r"^\| .+ → .+ \| (\d+) \|$", block, flags=re.M)]
        assert sum(pairs) == errors  # top=100 lists every pair
        assert classes <= min(errors, total)
    with pytest.raises(ConfigError, match=r"--sets: suite '[^']+' has no set 'nope'; choose from train, idv, sh, zs"):
        confusions(str(finetuned), "offline", ["nope"], data_root=str(bench))
