"""The OpenClipArt part of the offline pool: each drawing's text, its text-free SVG, and the folder reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from arf.data.offline.openclipart import clipart_texts, drawings, image_rel, svg_title, without_text
from arf.data.offline.render import Job, run_job
from arf.errors import InputFileError


def _svg(title: str | None, colour: str, extra: str = "") -> str:
    meta = f"<metadata><dc:title>{title}</dc:title></metadata>" if title is not None else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" width="40" '
            f'height="20">{meta}<rect width="40" height="20" fill="{colour}"/>{extra}</svg>')


def test_texts_are_titles_unless_a_collection_names_them():
    titles = {Path(f"a/star_{i}pt_step_0{i}.svg"): "gramastar" for i in range(5)}
    titles |= {Path("food/red_apple_01.svg"): "Red apple", Path("x/untitled_cat.svg"): ""}
    texts = clipart_texts(titles)
    assert texts[Path("food/red_apple_01.svg")] == "Red apple"
    assert texts[Path("a/star_3pt_step_03.svg")] == "star 3pt step"  # five drawings share the title: file name
    assert texts[Path("x/untitled_cat.svg")] == "untitled cat"
    assert svg_title(_svg("Red \n  apple", "red")) == "Red apple"
    assert svg_title(_svg(None, "red")) == ""


def test_text_elements_are_removed_and_the_picture_kept():
    words = ('<text x="1" y="9"><tspan>STOP</tspan></text><text id="t2"/>'
             '<flowRoot><flowRegion><rect/></flowRegion><flowPara>GIVE WAY</flowPara></flowRoot >')
    svg = _svg("Give way", "red", words)
    clean = without_text(svg)
    assert "STOP" not in clean and "GIVE WAY" not in clean and "<text" not in clean and "flowRoot" not in clean
    assert '<rect width="40" height="20" fill="red"/>' in clean and "<dc:title>Give way</dc:title>" in clean
    assert without_text(_svg("x", "red")) == _svg("x", "red")


def test_drawings_read_a_folder_in_path_order_and_render(tmp_path):
    (tmp_path / "food").mkdir()
    (tmp_path / "animals").mkdir()
    (tmp_path / "food/red_apple_01.svg").write_text(_svg("Red apple", "red", '<text>apple</text>'))
    (tmp_path / "animals/green_frog_02.svg").write_text(_svg(None, "green"))
    got = drawings(tmp_path)
    assert [(d.rel, d.text) for d in got] == [("animals/green_frog_02.svg", "green frog"),
                                              ("food/red_apple_01.svg", "Red apple")]
    assert "<text" not in got[1].svg
    rel = image_rel(got[1].rel)
    assert rel.startswith("images/pool/openclipart/") and rel == image_rel("food/red_apple_01.svg")
    _, sha = run_job(Job(rel, "svg", got[1].svg, "plain", 32, 0), str(tmp_path / "out"))
    assert sha and (tmp_path / "out" / rel).is_file()
    with pytest.raises(InputFileError, match="apt-get install openclipart-svg"):
        drawings(tmp_path / "missing")
