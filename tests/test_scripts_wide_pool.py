"""scripts/wide_pool.py: the offline pool plus OpenClipArt drawings, on a tiny pool and a handful of SVGs."""

from __future__ import annotations

import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "wide_pool.py"
wide = runpy.run_path(str(SCRIPT))  # its functions, without running main


def _svg(title: str | None, colour: str) -> str:
    meta = f"<metadata><dc:title>{title}</dc:title></metadata>" if title is not None else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" width="40" '
            f'height="20">{meta}<rect width="40" height="20" fill="{colour}"/></svg>')


def test_texts_are_titles_unless_a_collection_names_them():
    titles = {Path(f"a/star_{i}pt_step_0{i}.svg"): "gramastar" for i in range(5)}
    titles |= {Path("food/red_apple_01.svg"): "Red  apple\n", Path("x/untitled_cat.svg"): ""}
    titles = {p: " ".join(t.split()) for p, t in titles.items()}
    texts = wide["clipart_texts"](titles)
    assert texts[Path("food/red_apple_01.svg")] == "Red apple"
    assert texts[Path("a/star_3pt_step_03.svg")] == "star 3pt step"  # five drawings share the title: file name
    assert texts[Path("x/untitled_cat.svg")] == "untitled cat"
    assert wide["svg_title"](_svg("Red apple", "red")) == "Red apple"
    assert wide["svg_title"](_svg(None, "red")) == ""


def test_build_pool_keeps_the_offline_rows_and_adds_rendered_unique_drawings(tmp_path, capsys):
    base = tmp_path / "bench"
    (base / "images/pool/openmoji").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(base / "images/pool/openmoji/1f600.png")
    pq.write_table(pa.table({"path": ["images/pool/openmoji/1f600.png"], "text": ["a grinning face."],
                             "family": ["openmoji"], "sha256": ["x"]}), base / "pool.parquet")
    clip = tmp_path / "svg"
    (clip / "food").mkdir(parents=True)
    (clip / "animals").mkdir()
    (clip / "food/red_apple_01.svg").write_text(_svg("Red apple", "red"))
    (clip / "animals/green_frog_02.svg").write_text(_svg("Frog", "green"))
    (clip / "animals/broken.svg").write_text("<svg")
    path = wide["build_pool"](base, clip, tmp_path / "out", size=32, workers=1)
    rows = pq.read_table(path).to_pylist()
    assert rows[0]["path"] == "images/pool/openmoji/1f600.png" and (tmp_path / "out" / rows[0]["path"]).is_file()
    added = rows[1:]
    assert sorted(r["text"] for r in added) == ["Frog", "Red apple"]  # the broken drawing skipped
    assert {r["family"] for r in added} == {"openclipart"}
    for r in added:
        with Image.open(tmp_path / "out" / r["path"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    # the unrenderable drawing is counted, not silently lost
    out = capsys.readouterr().out
    assert "1 offline + 2 OpenClipArt (1 unrenderable, 0 duplicate pictures dropped) = 3 pairs" in out


def test_filter_keeps_every_offline_pair_and_added_pairs_at_least_as_well_matched_as_their_median():
    import numpy as np

    cosine = np.array([0.1, 0.2, 0.3, 0.05, 0.2, 0.25, 0.19])
    added = np.array([False, False, False, True, True, True, True])
    mask, floor = wide["well_matched"](cosine, added)
    assert mask.tolist() == [True, True, True, False, True, True, False]
    assert floor == 0.2
