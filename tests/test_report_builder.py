"""The report builder on synthetic JSONL records: table content, CSV, plots and curve counts."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from PIL import Image

from arf.cli import main
from arf.errors import InputFileError
from arf.evaluate import Record, append_records
from arf.report import build_report, collect_records, rename_methods, select_methods
from arf.report.plots import curve_points, style_color, style_index, sweep_line
from arf.report.tables import METHOD_ORDER, build_table, to_markdown

SETS = {"idset": "id", "s1": "shift", "s2": "shift", "z1": "zeroshot", "z2": "zeroshot", "v": "val"}
METHODS = {"ft": 1.0, "flyp": 2.0, "arf": 3.0}
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
SEEDS = [0, 1, 2]


def value(method: str, alpha: float, set_: str, seed: int) -> float:
    """A smooth made-up accuracy: ID rises with alpha, OOD/zero-shot peak mid-way; method and seed shift it."""
    role = SETS[set_]
    zs = 50.0 + len(set_)
    if role in ("id", "val"):
        v = zs + 30 * alpha
    else:
        v = zs + METHODS[method] * 4 * alpha * (1 - alpha) - 5 * alpha
    return v + 0.5 * seed


def synthetic() -> list[Record]:
    recs = []
    for seed in SEEDS:
        for m in METHODS:
            for a in ALPHAS:
                for s, role in SETS.items():
                    recs.append(Record(f"runs/{m}-{seed}", m, a, s, role, "top1", value(m, a, s, seed), 100, "h",
                                       seed))
                    recs.append(Record(f"runs/{m}-{seed}", m, a, s, role, "top5", 99.0, 100, "h", seed))
    for s, role in SETS.items():  # one zero-shot eval, single seed
        recs.append(Record("base", "zeroshot", None, s, role, "top1", value("ft", 0.0, s, 0), 100, "h", None))
    return recs


def test_table_content():
    table = build_table(synthetic(), wise_alphas=[0.5])
    labels = [r.label for r in table.rows]
    assert labels == ["zeroshot", "ft", "flyp", "arf", "ft + WiSE-FT (α=0.5)", "flyp + WiSE-FT (α=0.5)",
                      "arf + WiSE-FT (α=0.5)"]
    assert table.columns == ["v", "idset", "s1", "s2", "z1", "z2", "ID", "OOD avg", "zero-shot avg"]
    rows = {r.label: r for r in table.rows}
    for m in METHODS:
        for label, a in ((m, 1.0), (f"{m} + WiSE-FT (α=0.5)", 0.5)):
            cells = rows[label].cells
            per_seed_ood = [(value(m, a, "s1", s) + value(m, a, "s2", s)) / 2 for s in SEEDS]
            assert cells["OOD avg"].mean == pytest.approx(statistics.mean(per_seed_ood))
            assert cells["OOD avg"].std == pytest.approx(statistics.stdev(per_seed_ood))
            assert cells["OOD avg"].n == 3
            assert cells["ID"].mean == pytest.approx(statistics.mean(value(m, a, "idset", s) for s in SEEDS))
            zs = [(value(m, a, "z1", s) + value(m, a, "z2", s)) / 2 for s in SEEDS]
            assert cells["zero-shot avg"].mean == pytest.approx(statistics.mean(zs))
    assert rows["zeroshot"].cells["ID"].n == 1
    md = to_markdown(table)
    assert md.splitlines()[0] == "| method | v | idset | s1 | s2 | z1 | z2 | ID | OOD avg | zero-shot avg |"
    arf_line = next(line for line in md.splitlines() if line.startswith("| arf |"))
    assert f"{rows['arf'].cells['OOD avg'].mean:.1f} ± {rows['arf'].cells['OOD avg'].std:.1f}" in arf_line
    zs_line = next(line for line in md.splitlines() if line.startswith("| zeroshot |"))
    assert "±" not in zs_line



def test_several_wise_alphas_give_a_block_of_rows_per_alpha(tmp_path, capsys):
    # `arf report --wise-alpha 0.25,0.5,0.75`: every method at each α, blocks in α order; α 0 and 1 add no rows
    # (they are the zeroshot row and each method's own).
    table = build_table(synthetic(), wise_alphas=[0.0, 0.25, 0.75, 1.0])
    wise = [(r.method, r.alpha) for r in table.rows if r.alpha not in (None, 0.0, 1.0)]
    assert wise == [(m, a) for a in (0.25, 0.75) for m in METHODS]
    row = next(r for r in table.rows if r.label == "flyp + WiSE-FT (α=0.25)")
    assert row.cells["ID"].mean == pytest.approx(statistics.mean(value("flyp", 0.25, "idset", s) for s in SEEDS))
    assert [r.label for r in build_table(synthetic(), wise_alphas=[]).rows] == ["zeroshot", *METHODS]
    path = tmp_path / "records.jsonl"
    append_records(path, synthetic())
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--wise-alpha", "0:1:0.25"]) == 0
    md = (tmp_path / "r" / "results.md").read_text()
    assert all(f"{m} + WiSE-FT (α={a:g})" in md for m in METHODS for a in (0.25, 0.5, 0.75))
    capsys.readouterr()
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--wise-alpha", "0.5,2"]) == 2
    assert capsys.readouterr().err == "arf: error: --wise-alpha: 2.0 is outside [0, 1]\n"

def test_methods_keep_one_order_whatever_was_recorded_first():
    # Rows and plot colours follow METHOD_ORDER (lp, lpft, ft, flyp, arf, …); other names come after, as recorded.
    recs = synthetic()
    extra = [Record(r.model + "-v", name, r.alpha, r.set, r.role, r.metric, r.value, r.n, r.config_hash, r.seed)
             for name in ("arf-lam0.1", "lpft") for r in recs if r.method == "arf"]
    shuffled = extra + list(reversed(recs))
    order = ["zeroshot", "lpft", "ft", "flyp", "arf", "arf-lam0.1"]
    assert [r.label for r in build_table(shuffled, wise_alphas=[]).rows] == order
    assert list(curve_points(shuffled)) == order
    # Colours follow METHOD_ORDER too, so a figure without lp / lpft still draws flyp in flyp's colour.
    # (zeroshot is the black star, not a slot; a name ARF does not ship takes the first slot after the shipped ones)
    first_free = len(METHOD_ORDER) - 1
    assert [style_index(m, order) for m in ("lp", "ft", "flyp", "arf", "arf-lam0.1")] == [0, 2, 3, 4, first_free]
    assert style_index("flyp", ["ft", "flyp"]) == 3
    # A full protocol's figure (shipped methods + ablation rows) draws every curve in its own colour.
    many = [*METHOD_ORDER, "arf-ret0.3", "arf-cap0.1", "arf-lam0.1", "arf-k8"]
    colors = [style_color(style_index(m, many)) for m in many if m != "zeroshot"]
    assert len(set(colors)) == len(colors)


def test_curves_follow_alpha_order():
    pts = curve_points(synthetic(), x="ID", y="OOD avg")
    assert set(pts) == {"ft", "flyp", "arf", "zeroshot"}
    assert [p.alpha for p in pts["arf"]] == ALPHAS
    xs = [p.x for p in pts["arf"]]
    assert xs == sorted(xs)  # ID rises with alpha in the synthetic data
    mid = pts["arf"][2]
    assert mid.y == pytest.approx(statistics.mean((value("arf", 0.5, "s1", s) + value("arf", 0.5, "s2", s)) / 2
                                                  for s in SEEDS))


def test_a_single_alpha_sweep_is_closed_by_the_zero_shot_and_finetuned_models(tmp_path):
    # `arf wise --alphas 0.5` records only α = 0.5; the finetuned model's own eval has α None. The curve must still
    # run zero-shot → 0.5 → finetuned, one legend entry per method (docs/RESULTS.md §1 c).
    recs = [r for r in synthetic() if r.alpha == 0.5 or r.method == "zeroshot"]
    recs += [Record(r.model, r.method, None, r.set, r.role, r.metric, r.value, r.n, r.config_hash, r.seed)
             for r in synthetic() if r.alpha == 1.0]
    pts = curve_points(recs, x="ID", y="OOD avg")
    zero = next(p for p in pts["zeroshot"] if p.alpha is None)
    line = sweep_line(pts["arf"], zero)
    assert [p.alpha for p in line] == [0.0, 0.5, 1.0]
    assert (line[0].x, line[0].y) == (zero.x, zero.y) and line[2].x == pts["arf"][-1].x
    assert sweep_line([p for p in pts["arf"] if p.alpha is None], zero) == []  # no sweep: a marker, not a curve
    result = build_report(recs, tmp_path)
    assert result.curves == {"wise_id_vs_ood": 3, "wise_id_vs_zeroshot": 3}


def test_build_report_writes_files(tmp_path):
    path = tmp_path / "runs" / "records.jsonl"
    append_records(path, synthetic())
    (tmp_path / "runs" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')  # must be ignored
    recs = collect_records([tmp_path / "runs"])
    result = build_report(recs, tmp_path / "report")
    assert result.markdown_path.read_text().startswith("| method |")
    with result.csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows][:4] == ["zeroshot", "ft", "flyp", "arf"]
    assert float(rows[3]["OOD avg"]) == pytest.approx(result.table.rows[3].cells["OOD avg"].mean, abs=1e-4)
    assert result.curves == {"wise_id_vs_ood": 3, "wise_id_vs_zeroshot": 3}
    for p in result.plots.values():
        with Image.open(p) as im:
            assert im.size == (900, 600)
    assert (tmp_path / "report" / "summary.json").is_file()


def test_report_without_zeroshot_sets_skips_that_plot(tmp_path):
    recs = [r for r in synthetic() if r.role != "zeroshot"]
    result = build_report(recs, tmp_path)
    assert set(result.plots) == {"wise_id_vs_ood"}
    assert "zero-shot avg" not in result.table.columns


def test_zeroshot_row_from_alpha_zero_when_not_recorded():
    recs = [r for r in synthetic() if r.method != "zeroshot"]
    rows = {r.label: r for r in build_table(recs).rows}
    assert rows["zeroshot"].alpha == 0.0
    assert rows["zeroshot"].cells["ID"].mean == pytest.approx(statistics.mean(value("ft", 0.0, "idset", s)
                                                                             for s in SEEDS))


def test_collect_errors(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        collect_records([tmp_path / "missing.jsonl"])
    with pytest.raises(InputFileError, match=r"no \*records\*\.jsonl"):
        collect_records([tmp_path])


def test_variants_sharing_method_and_seed_are_flagged(caplog):
    recs = [Record("runs/a", "arf", None, "idset", "id", "top1", 60.0, 10, "h", 0),
            Record("runs/b", "arf", None, "idset", "id", "top1", 70.0, 10, "h", 0)]
    with caplog.at_level("WARNING"):
        row = build_table(recs).rows[0]
    assert row.cells["ID"].mean == 65.0 and row.cells["ID"].n == 2
    assert "share a seed" in caplog.text and "runs/a" in caplog.text


def test_val_retention_sets_get_their_own_averages_and_stay_out_of_the_test_averages():
    # val-shift / val-zeroshot sets are what retention settings are chosen on: never part of a test average.
    recs = [Record("m", "ft", None, s, role, "top1", v, 100, "h", 0) for s, role, v in (
        ("idset", "id", 90.0), ("s1", "shift", 50.0), ("z1", "zeroshot", 40.0), ("z2", "zeroshot", 30.0),
        ("v", "val", 80.0), ("vs1", "val-shift", 70.0), ("vs2", "val-shift", 60.0),
        ("vz1", "val-zeroshot", 10.0), ("vz2", "val-zeroshot", 20.0))]
    table = build_table(recs)
    assert table.columns == ["v", "vs1", "vs2", "vz1", "vz2", "idset", "s1", "z1", "z2", "ID", "OOD avg",
                             "zero-shot avg", "shift val avg", "zero-shot val avg"]
    cells = table.rows[0].cells
    assert cells["OOD avg"].mean == pytest.approx(50.0)
    assert cells["zero-shot avg"].mean == pytest.approx(35.0)
    assert cells["shift val avg"].mean == pytest.approx(65.0)
    assert cells["zero-shot val avg"].mean == pytest.approx(15.0)


def test_rename_shows_methods_under_new_names_and_can_swap_two(tmp_path, capsys, caplog):
    # Relabelling a method (a config renamed after it ran) is a view: the records file keeps its names.
    path = tmp_path / "records.jsonl"
    append_records(path, synthetic())
    before = path.read_bytes()
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--rename", "arf=flyp,flyp=arf"]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "r" / "summary.json").read_text())["rows"]}
    swapped = build_table(synthetic())
    want = {r.label: r for r in swapped.rows}
    assert rows["arf"]["cells"]["OOD avg"]["mean"] == pytest.approx(want["flyp"].cells["OOD avg"].mean)
    assert rows["flyp"]["cells"]["OOD avg"]["mean"] == pytest.approx(want["arf"].cells["OOD avg"].mean)
    assert path.read_bytes() == before
    # A name that is already taken merges the two methods' runs into one row, and says so.
    recs = rename_methods(synthetic(), {"flyp": "ft"})
    assert {r.method for r in recs} == {"zeroshot", "ft", "arf"}
    assert "method 'ft' has records already; the two are merged" in caplog.text
    capsys.readouterr()
    for bad, msg in (("arf", "--rename: 'arf' must look like OLD=NEW"),
                     ("nope=x", "--rename: no records of method 'nope'; the records hold arf, flyp, ft, zeroshot"),
                     ("arf=a,arf=b", "--rename: method 'arf' is renamed twice")):
        assert main(["report", str(path), "--out", str(tmp_path / "r"), "--rename", bad]) == 2
        assert capsys.readouterr().err == f"arf: error: {msg}\n"


def test_methods_keeps_the_named_methods_and_the_zero_shot_start(tmp_path, capsys):
    path = tmp_path / "records.jsonl"
    append_records(path, synthetic())
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--rename", "arf=arf-new",
                 "--methods", "arf-new,ft"]) == 0
    md = (tmp_path / "r" / "results.md").read_text()
    labels = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()[2:] if line.startswith("| ")]
    assert labels == ["zeroshot", "ft", "arf-new", "ft + WiSE-FT (α=0.5)", "arf-new + WiSE-FT (α=0.5)"]
    assert {r.method for r in select_methods(synthetic(), ["flyp"])} == {"zeroshot", "flyp"}
    capsys.readouterr()
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--methods", "arf,lp"]) == 2
    err = capsys.readouterr().err
    assert err == "arf: error: --methods: no records of method 'lp'; choose from arf, flyp, ft, zeroshot\n"


def test_merge_seeds_makes_runs_named_after_their_seed_one_row(tmp_path, capsys):
    # scripts/offline_variant.sh records method "<name>-s<seed>": one row per seed unless merged.
    import dataclasses

    from arf.report import merge_seed_names, seedless_method

    named = [dataclasses.replace(r, method=f"{r.method}-s{r.seed}") if r.seed is not None else r
             for r in synthetic()]
    other = Record("x", "arf-s3", 1.0, "idset", "id", "top1", 1.0, 100, "h", 0)  # seed 0: a name, not a seed
    assert seedless_method(other) == "arf-s3" and {r.method for r in merge_seed_names(named)} == {*METHODS, "zeroshot"}
    path = tmp_path / "records.jsonl"
    append_records(path, named)
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--merge-seeds", "--methods", "arf"]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "r" / "summary.json").read_text())["rows"]}
    want = {r.label: r for r in build_table(synthetic()).rows}
    assert set(rows) == {"zeroshot", "arf", "arf + WiSE-FT (α=0.5)"}
    assert rows["arf"]["cells"]["OOD avg"]["mean"] == pytest.approx(want["arf"].cells["OOD avg"].mean)
    assert rows["arf"]["cells"]["OOD avg"]["n"] == 3


def test_many_methods_put_the_legend_beside_the_axes(tmp_path):
    # Thirteen legend entries (as in `arf demo --full`) inside the axes covered the zero-shot star; beside them,
    # the figure widens and the axes keep the small report's size.
    from arf.report.plots import LEGEND_INSIDE_MAX, CurvePoint, plot_curves

    few = {"zeroshot": [CurvePoint(None, 20.0, 30.0)], "ft": [CurvePoint(None, 90.0, 25.0)]}
    many = dict(few, **{f"m{i}": [CurvePoint(None, 50.0 + i, 30.0 + i)] for i in range(LEGEND_INSIDE_MAX)})
    sizes = {}
    for name, pts in (("few", few), ("many", many)):
        plot_curves(pts, tmp_path / f"{name}.png", "ID", "OOD", name)
        with Image.open(tmp_path / f"{name}.png") as im:
            sizes[name] = im.size
    assert sizes["few"] == (900, 600)
    assert sizes["many"][0] > 900 and sizes["many"][1] == 600
